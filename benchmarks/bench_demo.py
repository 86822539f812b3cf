"""The demo's results over seeds and thread counts: does its story hold on
this machine whatever the seed and the number of threads?

Runs ``wsss-fast demo --seed S`` (every training stage seeded with S; the
data are the same for every run) for each thread count T (OMP_NUM_THREADS)
and seed S, each in a fresh process writing OUT/t<T>/seed<S>. Runs with
T = 1 may run ``--jobs`` at a time (each on its own core); the others run one
after another. Writes results/demo-cpu.json (every run's table and seconds,
each row's mean, sample standard deviation, minimum and maximum over all
runs, the CPU's model, ``uptime`` before and after) and the README's section
``demo-cpu``: the table that README quotes is this file's, not typed.

Checks (printed and in the file, each run separately): CAM + RW beats the
CAM by at least 2 points; DeepLab on val reaches 0.9 x the mIoU of the
pseudo labels it trained on (CAM + RW + CRF on train).

    python benchmarks/bench_demo.py [--threads 1 2] [--seeds 0 1 2] [--jobs 2] [--out /tmp/bench-demo]

With ``--compare``: ``wsss-fast demo --compare --seed S`` once per seed (2 threads, one after
another), results/demo_compare-cpu.json and the README's section ``demo-compare-cpu``: each
row of the comparison per seed, its mean and spread, and whether SC-CAM's last round's CAMs
beat round 0's. A seed's folder that already holds finished stages (same options) is reused,
not recomputed; the table then says which, and its stage seconds are those of the runs that
computed them.

    python benchmarks/bench_demo.py --compare [--seeds 0 1 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import cpu_description, update_readme, uptime, write_results  # noqa: E402
from wsss_fast.pipeline import format_seed_table, summarise_seeds  # noqa: E402

RW_GAIN = 0.02  # CAM + RW must beat CAM by this much (mIoU fraction)
SEG_RATIO = 0.9  # DeepLab (val) at least this fraction of its pseudo labels' mIoU (train)
CAM_ROW, RW_ROW, LABEL_ROW, SEG_ROW = "CAM", "CAM + RW", "CAM + RW + CRF", "DeepLab"


def run_demo(out: Path, threads: int, seed: int, overrides: list[str]) -> dict:
    """One demo run in a fresh process; returns its summary.json plus the wall time."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "wsss_fast", "demo", "--out", str(out), "--seed", str(seed), *overrides]
    start = time.perf_counter()
    with open(out.parent / f"seed{seed}.log", "w") as log:
        proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}); see {out.parent / f'seed{seed}.log'}")
    summary = json.loads((out / "summary.json").read_text())
    return {**summary, "wall_seconds": wall}


def row(summary: dict, name: str) -> float | None:
    return next((r.get("value", r.get("miou")) for r in summary["table"] if r["name"] == name), None)


def checks(summary: dict) -> dict:
    cam, rw, labels, seg = (row(summary, n) for n in (CAM_ROW, RW_ROW, LABEL_ROW, SEG_ROW))
    return {"rw_gain": None if None in (cam, rw) else rw - cam,
            "rw_gain_ok": None if None in (cam, rw) else rw - cam >= RW_GAIN,
            "seg_ratio": None if None in (labels, seg) else seg / labels,
            "seg_ratio_ok": None if None in (labels, seg) else seg / labels >= SEG_RATIO}


def readme_table(payload: dict) -> str:
    """Markdown: one column per run (threads, seed), then mean +- std and range."""
    runs = payload["records"]
    names = [r["name"] for r in runs[0]["table"]]
    head = "| result | " + " | ".join(f"{r['threads']} thr, seed {r['seed']}" for r in runs) + " | mean +- std | min..max |"
    lines = [head, "|" + " --- |" * (len(runs) + 3)]
    stats = {r["name"]: r for r in payload["summary"]["rows"]}
    for name in names:
        cells = [row(r, name) for r in runs]
        s = stats[name]
        lines.append(f"| {name} | " + " | ".join("-" if v is None else f"{100 * v:.2f}" for v in cells)
                     + (f" | {100 * s['mean']:.2f} +- {100 * s['std']:.2f} | {100 * s['min']:.2f}..{100 * s['max']:.2f} |"
                        if s["std"] is not None else " | - | - |"))
    lines.append("| CAM + RW - CAM | " + " | ".join(f"{100 * r['checks']['rw_gain']:+.2f}" for r in runs) + " | | |")
    lines.append("| DeepLab / pseudo labels | " + " | ".join(f"{r['checks']['seg_ratio']:.2f}" for r in runs) + " | | |")
    lines.append("| seconds | " + " | ".join(f"{r['total_seconds']:.0f}" for r in runs) + " | | |")
    cpu = payload["cpu"]
    lines.append("")
    lines.append(f"{cpu['model']}, {cpu['cores_available']} cores; {payload['jobs']} one-thread run(s) at a time; "
                 f"load before: {payload['uptime_before'].split('load average:')[-1].strip()}; "
                 f"commit {payload['environment']['commit']}.")
    return "\n".join(lines)


def run_compare(out: Path, seed: int, overrides: list[str]) -> dict:
    """One ``demo --compare`` run in a fresh process; its compare.json, the wall time, the
    seconds of its pipelines' stages as each was computed (``stage_seconds``) and the
    stages it found finished in ``out`` and reused (``reused_stages``)."""
    cmd = [sys.executable, "-m", "wsss_fast", "demo", "--compare", "--out", str(out), "--seed", str(seed),
           *overrides]
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "demo.log", "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}); see {out / 'demo.log'}")
    wall = time.perf_counter() - start
    pipelines = (("", out / "compare"), ("sccam/", out / "compare" / "sccam"), ("drs/", out / "compare" / "drs"))
    stages = [(prefix, stage) for prefix, folder in pipelines
              for stage in json.loads((folder / "summary.json").read_text())["stages"]]
    return {**json.loads((out / "compare.json").read_text()), "wall_seconds": wall,
            "stage_seconds": sum(stage["seconds"] for _, stage in stages),
            "reused_stages": [prefix + stage["name"] for prefix, stage in stages if stage["skipped"]]}


def compare_table(payload: dict) -> str:
    """Markdown: one column per seed, then mean +- std (``payload["summary"]``,
    :func:`wsss_fast.pipeline.summarise_seeds` of the runs)."""
    runs = payload["records"]
    lines = ["| result | " + " | ".join(f"seed {r['seed']}" for r in runs) + " | mean +- std |",
             "|" + " --- |" * (len(runs) + 2)]
    for stat in payload["summary"]["rows"]:
        values = [stat["values"][str(r["seed"])] for r in runs]  # JSON keys are strings
        cells = " | ".join("-" if v is None else f"{100 * v:.2f}" for v in values)
        mean = "-" if stat["mean"] is None else f"{100 * stat['mean']:.2f}"
        spread = "" if stat["std"] is None else f" +- {100 * stat['std']:.2f}"
        lines.append(f"| {stat['name']} | {cells} | {mean}{spread} |")
    lines.append("| stage seconds, as computed | " + " | ".join(f"{r['stage_seconds']:.0f}" for r in runs) + " | |")
    lines.append("| wall seconds of this run | " + " | ".join(f"{r['wall_seconds']:.0f}" for r in runs) + " | |")
    cpu = payload["cpu"]
    lines += ["", f"{cpu['model']}, {cpu['cores_available']} cores, 2 threads; load before: "
              f"{payload['uptime_before'].split('load average:')[-1].strip()}; commit {payload['environment']['commit']}."]
    for r in runs:
        if r["reused_stages"]:
            lines.append(f"Seed {r['seed']} reused {len(r['reused_stages'])} stages found finished in its folder "
                         f"(same options and fingerprints, computed earlier): {', '.join(r['reused_stages'])}.")
    return "\n".join(lines)


def main_compare(args) -> None:
    before = uptime()
    records = []
    for seed in args.seeds:
        result = run_compare(args.out / f"compare-seed{seed}", seed, args.overrides)
        records.append({"seed": seed, **result})
        print(f"seed {seed}: {result['wall_seconds']:.0f} s", flush=True)
    summary = summarise_seeds({r["seed"]: {"table": r["rows"], "total_seconds": r["wall_seconds"]} for r in records})
    means = {row["name"]: row["mean"] for row in summary["rows"]}
    round_cams = [name for name in means if name.startswith("SC-CAM round") and "CAM (" in name]
    payload = {"cpu": cpu_description(), "uptime_before": before, "uptime_after": uptime(),
               "overrides": args.overrides, "summary": summary,
               "sccam_last_round_at_least_round0": (means[round_cams[-1]] >= means[round_cams[0]]
                                                    if round_cams else None)}
    path = write_results("demo_compare", "cpu", records, **payload)
    print(f"wrote {path}")
    update_readme("demo-compare-cpu", compare_table(json.loads(path.read_text())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="one-thread runs at a time (default 2)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-demo"))
    parser.add_argument("--compare", action="store_true", help="run demo --compare per seed instead")
    parser.add_argument("overrides", nargs="*", help="demo overrides (KEY=VALUE)")
    args = parser.parse_args()
    if args.compare:
        return main_compare(args)
    before = uptime()
    records = []
    for threads in args.threads:
        (args.out / f"t{threads}").mkdir(parents=True, exist_ok=True)
        jobs = args.jobs if threads == 1 else 1
        with ThreadPoolExecutor(jobs) as pool:
            futures = {seed: pool.submit(run_demo, args.out / f"t{threads}" / f"seed{seed}", threads, seed,
                                         args.overrides) for seed in args.seeds}
            for seed, future in futures.items():
                summary = future.result()
                records.append({"threads": threads, "seed": seed, "table": summary["table"],
                                "total_seconds": summary["total_seconds"], "wall_seconds": summary["wall_seconds"],
                                "checks": checks(summary)})
                print(f"threads {threads} seed {seed}: {summary['total_seconds']:.0f} s, {records[-1]['checks']}",
                      flush=True)
    summary = summarise_seeds({f"{r['threads']}t s{r['seed']}": {"table": r["table"], "total_seconds": r["total_seconds"]}
                               for r in records})
    print(format_seed_table(summary, column="{}"))
    payload = {"cpu": cpu_description(), "uptime_before": before, "uptime_after": uptime(), "jobs": args.jobs,
               "overrides": args.overrides, "summary": summary,
               "all_rw_gain_ok": all(r["checks"]["rw_gain_ok"] for r in records),
               "all_seg_ratio_ok": all(r["checks"]["seg_ratio_ok"] for r in records)}
    path = write_results("demo", "cpu", records, **payload)
    print(f"wrote {path}")
    payload = json.loads(path.read_text())
    update_readme("demo-cpu", readme_table(payload))


if __name__ == "__main__":
    main()
