"""bfloat16 against float32 CPU inference on the demo: mIoU and seconds of
each inference stage with the same models and inputs.

Takes the models and CAMs of a finished demo run (``--run DIR``; made with
``wsss-fast demo --out DIR`` when DIR has no summary.json) and runs, with
``--cpu-precision float32`` and then ``bfloat16``, each in a fresh
``python -m wsss_fast`` process:

  make-cam   the classifier over the training images (PSA's 8 passes), then
             eval-cam: mIoU at the best background threshold of the sweep and
             at 0.15 / 0.2 / 0.25;
  rw         the random walk (AffinityNet forward + walk) of the run's own
             make-cam CAMs over the training images, then eval;
  infer-seg  DeepLab over the validation images, then eval.

The seconds are each command's wall time (start-up included). The issue's
bound: the CAM mIoU in bfloat16 within 0.2 points of float32; ``auto`` picks
bfloat16 only where the CPU computes it natively. Results:
benchmarks/results/precision-cpu.json and the README's table.

    python benchmarks/bench_precision.py [--run /tmp/wsss-fast-precision/demo-run]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import cpu_description, print_table, update_readme, uptime, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PRECISIONS = ("float32", "bfloat16")


def wsss_fast(*args: str) -> float:
    """Seconds of ``python -m wsss_fast ARGS`` (this checkout); exits on failure."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "wsss_fast", *args], env=env, capture_output=True, text=True,
                             cwd=Path(env["PYTHONPATH"]).parent)
    if run.returncode != 0:
        raise SystemExit(f"wsss-fast {' '.join(args)} failed:\n{run.stderr[-2000:]}")
    return time.perf_counter() - start


def readme_table(payload: dict) -> str:
    """The README's table of this benchmark's results file (markdown)."""
    rows = {(r["stage"], r["precision"]): r for r in payload["records"]}
    lines = [f"{payload['cpu']['model']} (bfloat16 flags: {', '.join(payload['cpu']['bf16_flags']) or 'none'}), "
             f"{payload['cpu']['cores_available']} cores, commit {payload['environment']['commit']}, "
             f"{payload['environment']['date']}; load before: {payload['uptime_before_after'][0]}; after: "
             f"{payload['uptime_before_after'][1]}.", "",
             "| stage (demo) | mIoU float32 | mIoU bfloat16 | difference | seconds float32 | seconds bfloat16 "
             "| speedup |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for stage in dict.fromkeys(r["stage"] for r in payload["records"]):
        f, b = rows[(stage, "float32")], rows[(stage, "bfloat16")]
        lines.append(f"| {stage} | {100 * f['miou']:.2f}% | {100 * b['miou']:.2f}% | "
                     f"{100 * (b['miou'] - f['miou']):+.2f} | {f['seconds']:.1f} | {b['seconds']:.1f} | "
                     f"{f['seconds'] / b['seconds']:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("/tmp/wsss-fast-precision/demo-run"),
                        help="a finished `wsss-fast demo` folder (made when missing)")
    parser.add_argument("--no-write", action="store_true",
                        help="do not write benchmarks/results/ (nor the README's table)")
    args = parser.parse_args()
    run = args.run
    if not (run / "summary.json").is_file():
        print(f"running wsss-fast demo --out {run} ...", flush=True)
        wsss_fast("demo", "--out", str(run))
    data = run / "data"
    splits = data / "ImageSets" / "Segmentation"
    work = run.parent / "precision"
    before = uptime()
    records = []
    for precision in PRECISIONS:
        out = work / precision
        flag = ("--cpu-precision", precision)
        jobs = {
            "CAM (make-cam, train)": (
                ["make-cam", "--voc", str(data), "--split", "train", "--model", str(run / "train-cls"),
                 "--out", str(out / "cam"), "--no-progress", *flag],
                ["eval-cam", "--cam", str(out / "cam"), "--gt", str(data / "SegmentationClass"),
                 "--names", str(splits / "train.txt"), "--json", str(out / "cam.json"), "--no-progress"]),
            "CAM + RW (rw, train)": (
                ["rw", "--voc", str(data), "--split", "train", "--model", str(run / "train-aff"),
                 "--cam", str(run / "make-cam"), "--out", str(out / "rw"), "--no-progress", *flag],
                ["eval", "--pred", str(out / "rw"), "--gt", str(data / "SegmentationClass"),
                 "--names", str(splits / "train.txt"), "--json", str(out / "rw.json"), "--no-progress"]),
            "DeepLab (infer-seg, val)": (
                ["infer-seg", "--voc", str(data), "--split", "val", "--model", str(run / "train-seg"),
                 "--out", str(out / "seg"), "--no-eval", "--no-progress", *flag],
                ["eval", "--pred", str(out / "seg"), "--gt", str(data / "SegmentationClass"),
                 "--names", str(splits / "val.txt"), "--json", str(out / "seg.json"), "--no-progress"]),
        }
        for stage, (command, evaluation) in jobs.items():
            if Path(command[command.index("--out") + 1]).exists():
                raise SystemExit(f"{out} holds outputs of an earlier run; remove {work} first")
            seconds = wsss_fast(*command)
            wsss_fast(*evaluation)
            result = json.loads(Path(evaluation[evaluation.index("--json") + 1]).read_text())
            record = {"stage": stage, "precision": precision, "seconds": seconds, "miou": result["miou"]}
            if "best" in result:
                record.update(threshold=result["threshold"],
                              fixed={k: v["miou"] for k, v in result["fixed"].items()})
            records.append(record)
            print(f"{stage:26s} {precision:9s} {seconds:7.1f} s  mIoU {100 * result['miou']:.2f}%", flush=True)
    after = uptime()
    print_table(records, ["stage", "precision", "seconds", "miou"])
    if not args.no_write:
        path = write_results("precision", "cpu", records, run=str(run), cpu=cpu_description(),
                             uptime_before_after=[before, after])
        print(f"wrote {path}")
        update_readme("precision-cpu", readme_table(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
