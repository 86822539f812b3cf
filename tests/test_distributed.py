"""Runs under torchrun with 2 CPU processes (gloo) against the same runs in
one process: training losses, byte-identical sharded inference of every
stage, the pipeline's rank-0 bookkeeping, and a rank killed mid-inference."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from cam_fixtures import one_thread  # noqa: F401
from dist_utils import child_pids, torchrun, torchrun_argv
from wsss_fast.cli import main
from wsss_fast.data.demo import make_demo_data
from wsss_fast.distributed import shard
from wsss_fast.inference import batches_by_size, shard_by_batch
from wsss_fast.training import FINAL, LOG

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

N_TRAIN = 16
KILL_IMAGES = 48
TRAINING = ("train-cls", "train-aff", "train-seg")
INFERENCE = ("make-cam", "make-labels", "make-aff-labels", "rw", "infer-seg")
# Per-epoch mean losses of 2 processes (gradients averaged by DDP) against 1
# process (the mean over the same 8 images): only float summation order differs.
LOSS_RTOL = 1e-4


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    make_demo_data(root, n_train=N_TRAIN, n_val=4, size=48, progress=False)
    return root


def pipeline_config(voc: Path, out: Path) -> dict:
    small = {"epochs": 1, "crop": 32, "batch_size": 8, "num_workers": 0}
    return {"voc": str(voc), "out": str(out), "device": "cpu", "train_split": "train", "val_split": "val",
            "stages": {"train-cls": {**small, "method": "cam", "backbone": "scratch", "backbone_option": {"width": 4},
                                     "dropout": 0, "resize_long": [32, 48]},
                       "make-cam": {"workers": 0}, "make-labels": {}, "make-aff-labels": {"workers": 1},
                       "train-aff": small, "rw": {"num_workers": 0}, "eval-rw": {},
                       "train-seg": {**small, "init": "@train-cls"}, "infer-seg": {"num_workers": 0}}}


def write_config(voc: Path, out: Path) -> Path:
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(pipeline_config(voc, out)))
    return path


@pytest.fixture(scope="module")
def single(voc, tmp_path_factory):
    """The pipeline run in one process."""
    out = tmp_path_factory.mktemp("single") / "run"
    torch.set_num_threads(1)
    assert main(["run", str(write_config(voc, out))]) == 0
    return out


def outputs(folder: Path) -> dict[str, bytes]:
    """Every per-image output under ``folder`` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.suffix in (".npz", ".png")}


def test_shard_deals_every_item_once():
    items = list(range(7))
    parts = [shard(items, r, 3) for r in range(3)]
    assert parts == [[0, 3, 6], [1, 4], [2, 5]]
    with pytest.raises(ValueError, match="rank 3 outside world size 3"):
        shard(items, 3, 3)


def test_shard_by_batch_keeps_every_batch_of_one_process(tmp_path, monkeypatch):
    sizes = [(32, 48)] * 5 + [(48, 32)] * 4 + [(32, 48)] * 2  # two sizes, interleaved
    paths = []
    for i, (h, w) in enumerate(sizes):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (w, h)).save(paths[-1])
    names = [f"img{i}" for i in range(len(sizes))]
    single = [[names[i] for i in b] for b in batches_by_size(sizes, 3)]
    shares = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        shares.append(shard_by_batch(paths, 3, names))
    assert sorted(shares[0] + shares[1]) == sorted(names)
    for share in shares:  # re-batching a rank's share (what the stages do) gives batches of the single run
        index = {n: i for i, n in enumerate(names)}
        rebatched = batches_by_size([sizes[index[n]] for n in share], 3)
        assert all([share[i] for i in b] in single for b in rebatched)


def test_two_processes_train_like_one(voc, tmp_path):
    args = ["train-cls", "--voc", voc, "--split", "train", "--method", "cam", "--backbone", "scratch",
            "--backbone-option", "width=4", "--backbone-option", "frozen_bn=true", "--dropout", "0",
            "--epochs", "2", "--batch-size", "8", "--crop", "32", "--resize-long", "32", "48",
            "--num-workers", "0", "--device", "cpu", "--no-progress"]
    assert main([str(a) for a in args + ["--out", tmp_path / "one"]]) == 0
    run = torchrun(*args, "--out", tmp_path / "two")
    assert run.returncode == 0, run.stderr

    def epochs(folder):
        records = [json.loads(line) for line in (folder / LOG).read_text().splitlines()]
        return records[0], [r["loss"] for r in records if r["event"] == "epoch"]

    (start1, one), (start2, two) = epochs(tmp_path / "one"), epochs(tmp_path / "two")
    assert (start1["processes"], start1["batch_per_process"]) == (1, 8)
    assert (start2["processes"], start2["batch_per_process"]) == (2, 4)
    assert len(one) == len(two) == 2 and one[0] != one[1]
    assert two == pytest.approx(one, rel=LOSS_RTOL)
    w1 = torch.load(tmp_path / "one" / FINAL, weights_only=True)["model"]
    w2 = torch.load(tmp_path / "two" / FINAL, weights_only=True)["model"]
    assert w1.keys() == w2.keys()
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], rtol=1e-4, atol=1e-5)
    # rank 0 alone wrote the log: one start record, one line per epoch
    assert sum('"event": "start"' in line for line in (tmp_path / "two" / LOG).read_text().splitlines()) == 1


def test_run_under_torchrun_shards_every_inference_stage_like_one_process(voc, single, tmp_path):
    out = tmp_path / "run"
    for stage in TRAINING:  # the same trained models, so the outputs can match to the byte
        shutil.copytree(single / stage, out / stage)
    run = torchrun("run", write_config(voc, out))
    assert run.returncode == 0, run.stderr
    for stage in INFERENCE:
        mine, reference = outputs(out / stage), outputs(single / stage)
        assert reference and mine == reference, stage
        assert (out / stage / "stage.json").is_file()
    assert run.stdout.count("[rw] wsss-fast rw") == 1  # rank 0 alone reports
    summary = json.loads((out / "summary.json").read_text())
    before = json.loads((single / "summary.json").read_text())
    assert summary["table"] == before["table"] and summary["table"][0]["miou"] is not None
    assert [s["skipped"] for s in summary["stages"]] == [s in TRAINING for s in
                                                          [r["name"] for r in summary["stages"]]]


def test_every_training_stage_runs_under_torchrun(voc, tmp_path):
    """DDP with each stage's network and loss (an unused parameter would fail at the second step)."""
    out = tmp_path / "run"
    run = torchrun("run", write_config(voc, out))
    assert run.returncode == 0, run.stderr
    for stage in TRAINING:
        log = [json.loads(line) for line in (out / stage / LOG).read_text().splitlines()]
        assert log[0]["processes"] == 2 and log[0]["steps_per_epoch"] == 2 and log[-1]["event"] == "done"
    assert all((out / stage / "stage.json").is_file() for stage in (*TRAINING, *INFERENCE, "eval-rw"))


def test_a_killed_rank_leaves_only_whole_files_and_a_rerun_completes_them(single, tmp_path):
    voc = tmp_path / "voc"  # larger images, so that the run is caught in the middle
    make_demo_data(voc, n_train=KILL_IMAGES, n_val=1, size=128, progress=False)
    args = ["make-cam", "--model", single / "train-cls", "--voc", voc, "--split", "train", "--workers", "0",
            "--batch-size", "1", "--no-progress"]
    # the reference with one thread, as each of the two ranks runs (bfloat16 CAMs differ in the last
    # bits between thread counts)
    clean = subprocess.run([sys.executable, "-m", "wsss_fast", *map(str, args), "--out", str(tmp_path / "clean")],
                           env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr
    reference = outputs(tmp_path / "clean")
    assert len(reference) == KILL_IMAGES

    out = tmp_path / "cam"
    proc = subprocess.Popen(torchrun_argv(*args, "--out", out), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not any(out.glob("*.npz")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.002)
    ranks = child_pids(proc.pid)
    assert len(ranks) == 2
    os.kill(ranks[0], signal.SIGKILL)  # one rank dies; torchrun then stops the other and fails
    assert proc.wait(timeout=60) != 0
    while any(Path(f"/proc/{pid}").exists() for pid in ranks) and time.monotonic() < deadline:
        time.sleep(0.05)
    killed_with = len(list(out.glob("*.npz")))
    assert 1 <= killed_with < KILL_IMAGES, "the run was not caught in the middle"
    for name, data in outputs(out).items():  # whatever was written is whole
        assert data == reference[name]

    run = torchrun(*args, "--out", out)
    assert run.returncode == 0, run.stderr
    assert sum(int(n) for n in re.findall(r"\): (\d+) images in", run.stdout)) == KILL_IMAGES - killed_with, \
        run.stdout
    assert outputs(out) == reference
    leftovers = [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert all(p.startswith(".") for p in leftovers)  # a killed writer's temp file is hidden, never an output
