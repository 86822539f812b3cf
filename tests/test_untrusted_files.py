"""No code runs from a data or model file a user hands wsss-fast: crafted
image-label files (the references' pickled cls_labels.npy), training
checkpoints and trained models are refused with a one-line error, and the
payload they carry never runs. Also: a read-only dataset root works."""
from __future__ import annotations

import errno

import numpy as np
import pytest
import torch

from wsss_fast import cli
from wsss_fast.data import VOCRoot, cls_labels, make_demo_data
from wsss_fast.errors import DataError, UsageError
from wsss_fast.training import CHECKPOINT, FINAL, load_final


class Payload:
    """Unpickles into a call of exec that writes ``marker``: the proof that
    code from the file ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("untrusted") / "demo"
    make_demo_data(root, n_train=4, n_val=0, size=32, seed=0, progress=False)
    return root


def one_line_error(capsys, status) -> str:
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_a_crafted_cls_labels_npy_is_refused_and_runs_nothing(tmp_path, demo_root, capsys):
    marker = tmp_path / "ran"
    root = tmp_path / "root"
    make_demo_data(root, n_train=4, n_val=0, size=32, seed=0, progress=False)
    (root / cls_labels.CACHE_FILE).unlink()
    np.save(root / cls_labels.REFERENCE_FILE, np.array(Payload(marker), dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="refusing to load builtins.exec"):
        VOCRoot(root).image_labels(["train_000000"])
    status = cli.main(["train-cls", "--voc", str(root), "--split", "train", "--out", str(tmp_path / "cls"),
                       "--backbone", "scratch", "--epochs", "1", "--no-progress", "--num-workers", "0"])
    assert "cls_labels.npy" in one_line_error(capsys, status)
    assert not marker.exists()


def test_a_reference_file_of_another_shape_is_refused(tmp_path):
    np.save(tmp_path / "cls_labels.npy", np.zeros((3, 20)))
    with pytest.raises(DataError, match="not the references' dict"):
        cls_labels.load_cls_labels(tmp_path / "cls_labels.npy")
    np.save(tmp_path / "cls_labels.npy", {"a": "text"}, allow_pickle=True)
    with pytest.raises(DataError, match="not a numeric vector"):
        cls_labels.load_cls_labels(tmp_path / "cls_labels.npy")


def test_a_crafted_final_pt_is_refused_and_runs_nothing(tmp_path, demo_root, capsys):
    marker = tmp_path / "ran"
    model = tmp_path / "model" / FINAL
    model.parent.mkdir()
    torch.save({"model": {}, "metadata": Payload(marker), "config": {}}, model)
    with pytest.raises(UsageError, match="refusing to load trained model"):
        load_final(model)
    status = cli.main(["make-cam", "--voc", str(demo_root), "--split", "train", "--model", str(model.parent),
                       "--out", str(tmp_path / "cams"), "--no-progress"])
    assert "refusing to load trained model" in one_line_error(capsys, status)
    assert not marker.exists()


def test_a_crafted_checkpoint_is_refused_on_resume_and_runs_nothing(tmp_path, demo_root, capsys):
    marker = tmp_path / "ran"
    out = tmp_path / "cls"
    out.mkdir()
    torch.save({"model": {}, "optimizer": Payload(marker), "scaler": {}, "epoch": 0, "config": {}},
               out / CHECKPOINT)
    status = cli.main(["train-cls", "--voc", str(demo_root), "--split", "train", "--out", str(out), "--resume",
                       "--backbone", "scratch", "--epochs", "1", "--no-progress", "--num-workers", "0"])
    err = one_line_error(capsys, status)
    assert "refusing to load training checkpoint" in err and str(out / CHECKPOINT) in err
    assert not marker.exists()


def test_a_read_only_root_gets_its_label_cache_in_the_user_cache(tmp_path, monkeypatch):
    root = tmp_path / "shared-voc"
    make_demo_data(root, n_train=4, n_val=0, size=32, seed=0, progress=False)
    (root / cls_labels.CACHE_FILE).unlink()
    monkeypatch.setenv("WSSS_FAST_CACHE", str(tmp_path / "user-cache"))
    write_cache = cls_labels.write_cache

    def read_only_root(path, labels):  # what a read-only mount (or another user's files) does
        if root in path.parents:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        write_cache(path, labels)

    monkeypatch.setattr(cls_labels, "write_cache", read_only_root)
    root.chmod(0o555)
    try:
        labels = VOCRoot(root).image_labels(["train_000000", "train_000001"])
    finally:
        root.chmod(0o755)
    cache = cls_labels.user_cache_path(root)
    assert cache.is_file() and not (root / cls_labels.CACHE_FILE).exists()
    assert set(cls_labels.load_cls_labels(cache)) == set(labels)
