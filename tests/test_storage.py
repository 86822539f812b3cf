"""Score-map and label-map formats: round trips, readers of foreign PNG kinds,
errors naming the file, and atomic writes."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from wsss_fast import storage
from wsss_fast.errors import DataError
from wsss_fast.eval import names_in
from wsss_fast.palette import VOC_PALETTE, colorize
from wsss_fast.storage import (ScoreMap, atomic_output, load_label_png, load_scores, save_label_png,
                               save_scores)


def random_scores(k=3, h=37, w=53, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((k, h, w)).astype(np.float32)


def test_float16_round_trip(tmp_path):
    data = random_scores()
    save_scores(tmp_path / "a.npz", [15, 1, 7], data)
    loaded = load_scores(tmp_path / "a.npz")
    assert loaded.keys.tolist() == [15, 1, 7]
    assert loaded.data.dtype == np.float32 and loaded.data.shape == data.shape
    np.testing.assert_allclose(loaded.data, data, rtol=1e-3, atol=1e-4)


def test_uint8_round_trip_within_half_a_step(tmp_path):
    data = random_scores() * np.array([1.0, 3.0, 0.0], dtype=np.float32)[:, None, None]
    save_scores(tmp_path / "q.npz", [1, 2, 3], data, encoding="uint8")
    loaded = load_scores(tmp_path / "q.npz")
    step = data.reshape(3, -1).max(axis=1) / 255
    err = np.abs(loaded.data - data).reshape(3, -1).max(axis=1)
    assert (err <= step / 2 + 1e-6).all()
    assert (loaded.data[2] == 0).all()


def test_compact_compared_to_dense_float32(tmp_path):
    yy, xx = np.mgrid[:375, :500] / 500.0
    smooth = np.stack([np.exp(-((yy - 0.3) ** 2 + (xx - 0.4) ** 2) * 20),
                       np.exp(-((yy - 0.5) ** 2 + (xx - 0.7) ** 2) * 10)]).astype(np.float32)
    save_scores(tmp_path / "s.npz", [3, 15], smooth)
    save_scores(tmp_path / "q.npz", [3, 15], smooth, encoding="uint8")
    dense_bytes = 21 * 375 * 500 * 4
    assert os.path.getsize(tmp_path / "s.npz") < dense_bytes / 20
    assert os.path.getsize(tmp_path / "q.npz") < os.path.getsize(tmp_path / "s.npz")


def test_no_class_and_dense_expansion(tmp_path):
    save_scores(tmp_path / "e.npz", [], np.zeros((0, 4, 5)))
    empty = load_scores(tmp_path / "e.npz")
    assert empty.keys.shape == (0,) and empty.data.shape == (0, 4, 5)
    assert (empty.dense(21) == 0).all()
    maps = ScoreMap(np.array([2, 5]), np.ones((2, 4, 5), dtype=np.float32))
    dense = maps.dense(6, fill=-1.0)
    assert dense.shape == (6, 4, 5)
    assert (dense[[2, 5]] == 1).all() and (dense[[0, 1, 3, 4]] == -1).all()


@pytest.mark.parametrize("keys, data, encoding", [
    ([1, 1], np.zeros((2, 3, 3)), "float16"),
    ([1], np.zeros((2, 3, 3)), "float16"),
    ([1], np.full((1, 3, 3), np.nan), "float16"),
    ([1], -np.ones((1, 3, 3)), "uint8"),
    ([1], np.ones((1, 3, 3)), "bfloat"),
])
def test_save_scores_rejects_bad_input(tmp_path, keys, data, encoding):
    with pytest.raises(ValueError):
        save_scores(tmp_path / "x.npz", keys, data, encoding=encoding)
    assert list(tmp_path.iterdir()) == []


def test_load_scores_names_missing_and_damaged_files(tmp_path):
    with pytest.raises(DataError, match=rf"'nope.npz' in {tmp_path}"):
        load_scores(tmp_path / "nope.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="unreadable score file 'bad.npz'"):
        load_scores(tmp_path / "bad.npz")


def test_label_png_round_trip_is_a_voc_palette_png(tmp_path):
    label = np.random.default_rng(1).integers(0, 21, (30, 40)).astype(np.uint8)
    label[0] = 255
    save_label_png(tmp_path / "l.png", label)
    with Image.open(tmp_path / "l.png") as image:
        assert image.mode == "P"
        assert np.array_equal(np.array(image.getpalette()[:768]).reshape(256, 3), VOC_PALETTE)
    assert np.array_equal(load_label_png(tmp_path / "l.png"), label)


def test_label_png_reads_index_and_rgb_pngs(tmp_path):
    label = np.random.default_rng(2).integers(0, 21, (8, 9)).astype(np.uint8)
    label[2, 3] = 255
    Image.fromarray(label, mode="L").save(tmp_path / "index.png")
    Image.fromarray(colorize(label)).save(tmp_path / "rgb.png")
    assert np.array_equal(load_label_png(tmp_path / "index.png"), label)
    assert np.array_equal(load_label_png(tmp_path / "rgb.png"), label)
    Image.fromarray(np.full((2, 2, 3), 7, dtype=np.uint8)).save(tmp_path / "odd.png")
    with pytest.raises(DataError, match="'odd.png'.*not a VOC palette colour"):
        load_label_png(tmp_path / "odd.png")
    with pytest.raises(DataError, match=rf"missing label map 'gone.png' in {tmp_path}"):
        load_label_png(tmp_path / "gone.png")


def test_interrupted_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "cam.npz"
    save_scores(target, [1], np.ones((1, 4, 4)))
    before = target.read_bytes()

    def half_then_fail(f, **arrays):
        f.write(b"PK\x03\x04 half an archive")
        raise KeyboardInterrupt

    monkeypatch.setattr(storage.np, "savez_compressed", half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        save_scores(target, [2], np.zeros((1, 4, 4)))
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cam.npz"]


def test_interrupted_png_write_leaves_no_file(tmp_path, monkeypatch):
    def fail(self, fp, format=None, **params):
        open(fp, "wb").write(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", fail)
    with pytest.raises(OSError):
        save_label_png(tmp_path / "l.png", np.zeros((4, 4), dtype=np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_killed_writer_leaves_only_a_hidden_temp_that_readers_skip(tmp_path):
    code = ("import os, sys\nfrom wsss_fast.storage import atomic_output\n"
            "with atomic_output(sys.argv[1]) as tmp:\n"
            "    tmp.write_bytes(b'partial')\n"
            "    os._exit(9)\n")
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.npz")], cwd=os.getcwd())
    assert run.returncode == 9
    assert not (tmp_path / "x.npz").exists()
    leftovers = list(tmp_path.iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".x.npz.")
    save_scores(tmp_path / "y.npz", [1], np.ones((1, 2, 2)))
    assert names_in(tmp_path, ".npz") == ["y"]


def test_atomic_output_creates_parents(tmp_path):
    with atomic_output(tmp_path / "a" / "b" / "c.txt") as tmp:
        tmp.write_text("hello")
    assert (tmp_path / "a" / "b" / "c.txt").read_text() == "hello"


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_outputs_honour_the_umask(tmp_path, umask):
    """Other users of a shared run folder can read what wsss-fast writes
    (mkstemp alone would make every file 0600)."""
    old = os.umask(umask)
    try:
        assert storage.current_umask() == umask
        save_scores(tmp_path / "a.npz", [1], np.ones((1, 2, 2)))
        save_label_png(tmp_path / "a.png", np.zeros((2, 2), np.uint8))
        storage.write_text_atomic(tmp_path / "a.json", "{}")
        open(tmp_path / "plain", "w").close()
    finally:
        os.umask(old)
    plain = (tmp_path / "plain").stat().st_mode & 0o777
    assert plain == 0o666 & ~umask
    for name in ("a.npz", "a.png", "a.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == plain, name
