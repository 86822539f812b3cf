"""Rewrites the README's generated tables from the results files as they
are, without running anything: the CAM engine (results/cam-*-cpu.json), the
dense CRF (results/crf-cpu.json), the pipeline (results/pipeline-cpu.json), the shared-cores runs
(results/shared_cores-cpu.json, shared_cores_demo-cpu.json) and the CPU precision runs
(results/precision-cpu.json). Each benchmark also rewrites its own table
when it writes its results file.

    python benchmarks/readme_tables.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import bench_cam, bench_crf, bench_pipeline, bench_precision, bench_shared_cores  # noqa: E402
from benchmarks.common import RESULTS_DIR, update_readme  # noqa: E402


def main() -> None:
    cams = sorted(RESULTS_DIR.glob("cam-*-cpu.json"))
    if cams:
        update_readme("cam-cpu", bench_cam.readme_table([json.loads(f.read_text()) for f in cams]))
    for key, name, module in (("crf-cpu", "crf-cpu.json", bench_crf),
                              ("pipeline-cpu", "pipeline-cpu.json", bench_pipeline),
                              ("shared-cores-cpu", "shared_cores-cpu.json", bench_shared_cores),
                              ("shared-cores-demo-cpu", "shared_cores_demo-cpu.json", bench_shared_cores),
                              ("precision-cpu", "precision-cpu.json", bench_precision)):
        path = RESULTS_DIR / name
        if path.is_file():
            update_readme(key, module.readme_table(json.loads(path.read_text())))
        else:
            print(f"no {path}; section {key} left as it is")


if __name__ == "__main__":
    main()
