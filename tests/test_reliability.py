"""One-line errors where a user's mistake used to end in a traceback, and one
writer per output folder. (Untrusted files: test_untrusted_files.py; stale
pipeline stages: test_pipeline.py; damaged outputs: test_cam.py and
test_pseudo_labels.py.)"""
from __future__ import annotations

import subprocess
import sys

import pytest

from cam_fixtures import classifier, demo_root, save_classifier
from wsss_fast import cli
from wsss_fast.outputs import LOCK_FILE

TRAIN = ["--split", "train", "--backbone", "scratch", "--epochs", "1", "--crop", "32", "--batch-size", "4",
         "--no-progress", "--num-workers", "0"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return demo_root(tmp_path_factory.mktemp("reliability") / "demo", n_train=4, size=32)


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.count("\n") == 0, err
    return err


def test_an_out_folder_that_is_a_file_is_refused_before_anything_runs(demo, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("a file")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["make-cam", "--voc", str(demo), "--model", str(tmp_path), "--out", str(taken)])
    assert exit_.value.code == 2
    assert f"argument --out: {taken} is a file, not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train-cls", "--voc", str(demo), "--out", str(taken / "run"), *TRAIN])
    assert f"cannot create {taken / 'run'}: {taken} is a file" in capsys.readouterr().err


def test_a_truncated_checkpoint_is_a_one_line_error(demo, tmp_path, capsys):
    out = tmp_path / "cls"
    assert cli.main(["train-cls", "--voc", str(demo), "--out", str(out), *TRAIN]) == 0
    (out / "final.pt").unlink()
    data = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    assert cli.main(["train-cls", "--voc", str(demo), "--out", str(out), "--resume", *TRAIN]) == 2
    assert "cannot read training checkpoint" in error_line(capsys)


def test_resuming_with_another_network_or_other_settings_is_a_one_line_error(demo, tmp_path, capsys):
    out = tmp_path / "cls"
    assert cli.main(["train-cls", "--voc", str(demo), "--out", str(out), *TRAIN]) == 0
    (out / "final.pt").unlink()  # as if stopped after the checkpoint
    capsys.readouterr()
    wider = ["--backbone-option", "width=8"]
    assert cli.main(["train-cls", "--voc", str(demo), "--out", str(out), "--resume", *TRAIN, *wider]) == 2
    assert "holds another network than this run trains" in error_line(capsys)
    assert cli.main(["train-cls", "--voc", str(demo), "--out", str(out), "--resume", *TRAIN, "--lr", "0.5"]) == 2
    assert "was made with other training settings (lr: " in error_line(capsys)


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, b"wsss-fast make-cam (pid 4242)")
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_writer_of_an_output_folder_is_refused(demo, tmp_path, capsys):
    pytest.importorskip("fcntl")
    model = save_classifier(tmp_path / "model" / "final.pt", classifier())
    out = tmp_path / "cams"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out / LOCK_FILE)], stdout=subprocess.PIPE,
                              text=True)
    argv = ["make-cam", "--voc", str(demo), "--split", "train", "--model", str(model), "--out", str(out),
            "--scales", "1", "--workers", "0", "--no-progress"]
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert cli.main(argv) == 2
        assert "is being written by wsss-fast make-cam (pid 4242)" in error_line(capsys)
        assert not list(out.glob("*.npz"))
    finally:
        holder.kill()
        holder.wait()
    assert cli.main(argv) == 0  # the lock died with its holder
    assert len(list(out.glob("*.npz"))) == 4
