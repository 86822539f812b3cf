"""Wall time of wsss-fast's CPU stages alone and beside a process that keeps
a core busy (a "CPU hog"), the situation of a shared machine or cluster node.

Jobs (each a fresh ``python -m wsss_fast`` process on the bundled demo data,
written once to ``--data``, 128 px images):

  train-cls  the demo's classifier settings (configs/demo.yaml: scratch CNN
             width 32, batch 16, crop 96, one decoding worker) for ``--epochs``
             epochs over the 2000 training images;
  make-cam   PSA's 8 passes over the first ``--cam-images`` training images
             with that classifier (2 decoding workers, make-cam's default);
  demo       the whole ``wsss-fast demo`` pipeline (``--jobs demo``).

Hogs: none ("alone"), one ``python -c "while True: pass"`` free to run on any
core ("hog"), or that hog pinned to the first core of this process's
affinity ("pinned hog").

Ways:

  wsss-fast  the command line as it is (wsss_fast.cpu: OMP_WAIT_POLICY=PASSIVE
             set before torch loads, threads from the available cores, freed
             memory kept);
  spinning   the same with ``GOMP_SPINCOUNT=300000``, libgomp's own spin count
             when no wait policy is given (wsss-fast then leaves OpenMP's
             waiting alone): how OpenMP waits without wsss-fast's setting;
  before     (``--before ROOT``) another checkout's code (PYTHONPATH=ROOT, its
             own compiled extension), e.g. the commit before wsss_fast.cpu.

Every job runs once per (way, hog); the results file has each wall time,
the ratio to the same way alone, the CPU's model, and ``uptime`` before and
after. Timings need a machine with nothing else running: the load average
before the run is in the file.

    python benchmarks/bench_shared_cores.py [--epochs 1] [--cam-images 400] [--before ROOT]
    python benchmarks/bench_shared_cores.py --jobs demo --ways wsss-fast --hogs alone hog
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import cpu_description, print_table, update_readme, uptime, write_results  # noqa: E402
from wsss_fast.cpu import WAIT_VARIABLES  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HOGS = ("alone", "hog", "pinned hog")
JOBS = ("train-cls", "make-cam", "demo")
TRAIN_FLAGS = ["--method", "cam", "--backbone", "scratch", "--backbone-option", "width=32", "--dropout", "0",
               "--batch-size", "16", "--lr", "0.01", "--momentum", "0.9", "--crop", "96",
               "--resize-long", "96", "144", "--num-workers", "1", "--no-progress"]


def start_hog(kind: str) -> subprocess.Popen | None:
    """The busy process of ``kind`` (None when "alone")."""
    if kind == "alone":
        return None
    first = min(os.sched_getaffinity(0))
    return subprocess.Popen([sys.executable, "-c", "while True: pass"],
                            preexec_fn=(lambda: os.sched_setaffinity(0, {first})) if kind == "pinned hog" else None)


def environment(way: str, before: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in WAIT_VARIABLES}
    env["PYTHONPATH"] = str(before if way == "before" else ROOT)
    if way == "spinning":
        env["GOMP_SPINCOUNT"] = "300000"
    return env


def timed_run(args: list[str], env: dict[str, str], hog: str) -> float:
    """Seconds of ``python -m wsss_fast ARGS`` beside the hog of that kind."""
    process = start_hog(hog)
    try:
        start = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "wsss_fast", *args], env=env, capture_output=True, text=True,
                             cwd=Path(env["PYTHONPATH"]).parent)
        seconds = time.perf_counter() - start
    finally:
        if process is not None:
            process.kill()
            process.wait()
    if run.returncode != 0:
        raise SystemExit(f"wsss-fast {' '.join(args)} failed:\n{run.stderr[-2000:]}")
    return seconds


def readme_table(payload: dict) -> str:
    """The README's table of this benchmark's results file (markdown)."""
    hogs = [h for h in HOGS if any(r["hog"] == h for r in payload["records"])]
    lines = [f"{payload['cpu']['model']}, {payload['cpu']['cores_available']} cores, commit "
             f"{payload['environment']['commit']}, {payload['environment']['date']}; load before: "
             f"{payload['uptime_before_after'][0]}; after: {payload['uptime_before_after'][1]}.", "",
             "| job | way | " + " | ".join(hogs) + " |", "| --- | --- |" + " --- |" * len(hogs)]
    for job in dict.fromkeys(r["job"] for r in payload["records"]):
        for way in dict.fromkeys(r["way"] for r in payload["records"]):
            rows = {r["hog"]: r for r in payload["records"] if r["job"] == job and r["way"] == way}
            if rows:
                cells = [f"{rows[h]['seconds']:.1f} s" + ("" if h == "alone" else f" ({rows[h]['ratio']:.2f}x)")
                         for h in hogs]
                lines.append(f"| {job} | {way} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/wsss-fast-shared-cores"),
                        help="working folder: demo data, models, outputs (default /tmp/wsss-fast-shared-cores)")
    parser.add_argument("--epochs", type=int, default=1, help="train-cls epochs (default 1)")
    parser.add_argument("--cam-images", type=int, default=400, help="make-cam images (default 400)")
    parser.add_argument("--ways", nargs="+", choices=("wsss-fast", "spinning", "before"),
                        default=["wsss-fast", "spinning"])
    parser.add_argument("--before", type=Path, metavar="ROOT", help="checkout of the 'before' way")
    parser.add_argument("--hogs", nargs="+", choices=HOGS, default=list(HOGS))
    parser.add_argument("--jobs", nargs="+", choices=JOBS, default=["train-cls", "make-cam"],
                        help="jobs to time (default train-cls make-cam; demo: the whole pipeline, about 8 min "
                             "alone; results-file and README names end in _demo when only the demo runs)")
    parser.add_argument("--no-write", action="store_true",
                        help="do not write benchmarks/results/ (nor the README's table)")
    args = parser.parse_args()
    if args.before:
        args.ways = list(dict.fromkeys(args.ways + ["before"]))
    if "before" in args.ways and args.before is None:
        parser.error("the 'before' way needs --before ROOT")

    before = uptime()
    data = args.data / "demo"
    if not (data / "ImageSets").is_dir():
        subprocess.run([sys.executable, "-m", "wsss_fast", "make-demo-data", str(data), "--no-progress"],
                       env=environment("wsss-fast", None), check=True, capture_output=True, cwd=ROOT.parent)
    names = (data / "ImageSets" / "Segmentation" / "train.txt").read_text().split()[:args.cam_images]
    subset = args.data / "cam-images.txt"
    subset.write_text("\n".join(names) + "\n")
    model = args.data / "cls"
    if not (model / "final.pt").is_file():
        subprocess.run([sys.executable, "-m", "wsss_fast", "train-cls", "--voc", str(data), "--split", "train",
                        "--out", str(model), "--epochs", "1", *TRAIN_FLAGS],
                       env=environment("wsss-fast", None), check=True, capture_output=True, cwd=ROOT.parent)

    def jobs(way: str, hog: str, run: str) -> dict[str, list[str]]:
        out = args.data / "runs" / f"{way}-{hog}-{run}".replace(" ", "_")
        job = {"train-cls": ["train-cls", "--voc", str(data), "--split", "train", "--out", str(out / "cls"),
                             "--epochs", str(args.epochs), *TRAIN_FLAGS],
               "make-cam": ["make-cam", "--voc", str(data), "--split", str(subset), "--model", str(model),
                            "--out", str(out / "cam"), "--no-progress"],
               "demo": ["demo", "--out", str(out / "demo")]}
        return {name: job[name] for name in args.jobs}

    shutil.rmtree(args.data / "runs", ignore_errors=True)
    records = []
    for name in jobs("", "", ""):
        for way in args.ways:
            env = environment(way, args.before)
            for hog in args.hogs:
                seconds = timed_run(jobs(way, hog, "timed")[name], env, hog)
                records.append({"job": name, "way": way, "hog": hog, "seconds": seconds})
                print(f"{name:9s} {way:9s} {hog:10s} {seconds:8.1f} s", flush=True)
    for r in records:
        alone = next(a for a in records if a["job"] == r["job"] and a["way"] == r["way"] and a["hog"] == "alone")
        r["ratio"] = r["seconds"] / alone["seconds"]
    after = uptime()
    print_table(records, ["job", "way", "hog", "seconds", "ratio"])
    print(f"uptime before: {before}\nuptime after:  {after}")
    if not args.no_write:
        suffix = "_demo" if args.jobs == ["demo"] else ""
        path = write_results(f"shared_cores{suffix}", "cpu", records, epochs=args.epochs, cam_images=args.cam_images,
                             before_root=str(args.before) if args.before else None, cpu=cpu_description(),
                             uptime_before_after=[before, after])
        print(f"wrote {path}")
        update_readme(f"shared-cores{suffix.replace('_', '-')}-cpu", readme_table(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
