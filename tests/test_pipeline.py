"""The one-command pipeline: the demo end to end on a tiny dataset, resume
after a run killed in the middle of a stage, and the summary it writes."""
from __future__ import annotations

import json

import pytest

import wsss_fast.stages.random_walk as rw_stage
from wsss_fast.cli import main
from wsss_fast.outputs import LOCK_FILE, PROVENANCE_FILE
from wsss_fast.storage import load_label_png

# One epoch per stage, tiny networks and crops (the demo config otherwise).
TINY = ["stages.train-cls.epochs=1", "stages.train-cls.backbone_option={width: 4}", "stages.train-cls.crop=32",
        "stages.train-cls.resize_long=[32, 48]", "stages.train-cls.batch_size=8", "stages.train-cls.num_workers=0",
        "stages.train-aff.epochs=1", "stages.train-aff.crop=32", "stages.train-aff.batch_size=8",
        "stages.train-aff.num_workers=0", "stages.train-seg.epochs=1", "stages.train-seg.crop=32",
        "stages.train-seg.batch_size=8",
        "stages.train-seg.num_workers=0", "stages.make-cam.workers=0", "stages.rw.num_workers=0",
        "stages.rw-crf.num_workers=0", "stages.infer-seg.num_workers=0", "stages.infer-seg-crf.num_workers=0"]
DEMO = ["--n-train", "24", "--n-val", "8", "--size", "48"]


class Killed(KeyboardInterrupt):
    pass


@pytest.mark.slow
def test_demo_end_to_end_resumes_after_a_kill(tmp_path, monkeypatch, capsys):
    out = tmp_path / "demo"
    written = []
    real_save = rw_stage.save_label_png

    def save_then_die(path, label):
        if path.parent.name == "rw":
            if len(written) == 5:
                raise Killed
            written.append(path.name)
        real_save(path, label)

    monkeypatch.setattr(rw_stage, "save_label_png", save_then_die)
    assert main(["demo", "--out", str(out), *DEMO, *TINY]) == 130  # killed in the rw stage
    rw_dir = out / "rw"
    kept = [p for p in rw_dir.iterdir() if p.name not in (PROVENANCE_FILE, LOCK_FILE)]
    assert sorted(p.name for p in kept) == sorted(written)  # finished images only, no temp files
    for path in kept:
        assert load_label_png(path).shape == (48, 48)
    assert not (rw_dir / "stage.json").exists() and (out / "train-aff" / "stage.json").exists()

    first_written = list(written)
    written.clear()
    monkeypatch.setattr(rw_stage, "save_label_png",
                        lambda path, label: (written.append(path.name) if path.parent.name == "rw" else None,
                                             real_save(path, label)))
    capsys.readouterr()
    assert main(["demo", "--out", str(out), *DEMO, *TINY]) == 0
    printed = capsys.readouterr().out
    assert len(written) == 24 - 5 and not set(written) & set(first_written)  # only the missing images
    assert "[train-cls] done before" in printed and "[rw] wsss-fast rw" in printed

    summary = json.loads((out / "summary.json").read_text())
    names = [s["name"] for s in summary["stages"]]
    assert names[:3] == ["train-cls", "make-cam", "eval-cam"] and names[-1] == "eval-seg-crf"
    for stage in summary["stages"]:
        assert stage["seconds"] >= 0 and (stage["miou"] is None or 0 <= stage["miou"] <= 1)
    table = {row["name"]: row["miou"] for row in summary["table"]}
    assert set(table) == {"CAM", "CAM + RW", "CAM + RW + CRF", "DeepLab", "DeepLab + CRF"}
    assert all(isinstance(v, float) for v in table.values())
    assert "CAM + RW + CRF" in printed and "total" in printed
    assert (out / "report" / "index.html").is_file()
    assert len(list((out / "infer-seg").glob("*.png"))) == 8

    # everything done: a third run skips every stage and writes the same table
    assert main(["demo", "--out", str(out), *DEMO, *TINY]) == 0
    again = json.loads((out / "summary.json").read_text())
    assert all(s["skipped"] for s in again["stages"]) and again["table"] == summary["table"]


def test_run_rejects_a_bad_key_before_running_anything(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"voc: {tmp_path}\nout: {tmp_path / 'out'}\nstages:\n  train-cls: {{epochs: 1}}\n")
    assert main(["run", str(config), "stages.train-cls.learning_rate=0.1"]) == 2
    err = capsys.readouterr().err
    assert "stages.train-cls: unknown option 'learning_rate'" in err
    assert not (tmp_path / "out").exists()


def test_shipped_configs_validate(tmp_path, capsys):
    from wsss_fast.config import CONFIG_DIR
    from wsss_fast.data.demo import make_demo_data

    make_demo_data(tmp_path / "data", n_train=8, n_val=4, size=32, progress=False)
    for name in ("demo.yaml", "voc_sccam.yaml", "voc_drs.yaml"):
        assert main(["run", str(CONFIG_DIR / name), f"voc={tmp_path / 'data'}", f"out={tmp_path / name}",
                     "train_split=train", "eval_split=train", "--check"]) == 0, name
        printed = capsys.readouterr().out
        assert "[train-cls] wsss-fast train-cls" in printed and "[eval-seg] wsss-fast eval" in printed


@pytest.fixture
def small_run(tmp_path):
    """A config of two quick stages (train-cls, make-cam) on a tiny demo set."""
    from wsss_fast.data.demo import make_demo_data

    make_demo_data(tmp_path / "data", n_train=8, n_val=0, size=32, progress=False)
    config = tmp_path / "c.yaml"
    config.write_text(
        f"voc: {tmp_path / 'data'}\nout: {tmp_path / 'out'}\ntrain_split: train\nstages:\n"
        "  train-cls: {method: cam, backbone: scratch, backbone_option: {width: 4}, epochs: 1, crop: 32,\n"
        "              resize_long: [32, 40], batch_size: 4, num_workers: 0}\n"
        "  make-cam: {scales: [1], workers: 0}\n")
    return config, tmp_path / "out"


def test_a_finished_stage_with_changed_options_is_refused_then_forced(small_run, capsys):
    config, out = small_run
    assert main(["run", str(config)]) == 0
    cams = sorted(p.name for p in (out / "make-cam").glob("*.npz"))
    assert len(cams) == 8
    record = json.loads((out / "train-cls" / "stage.json").read_text())
    assert record["options"]["--epochs"] == ["1"]
    capsys.readouterr()
    # a runtime-only change (workers) reuses everything
    assert main(["run", str(config), "stages.make-cam.workers=1"]) == 0
    assert "[make-cam] done before" in capsys.readouterr().out
    # a changed option would have trained 2 epochs but reused the 1-epoch model: refused
    assert main(["run", str(config), "stages.train-cls.epochs=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "stage train-cls finished before with other options (--epochs 1 -> 2)" in err
    assert "--force train-cls" in err
    # an earlier stage's change makes a later one stale as well
    (out / "train-cls" / "stage.json").write_text(json.dumps({**record, "fingerprint": "0"}))
    assert main(["run", str(config)]) == 2
    assert "stage train-cls finished before after other earlier stages" in capsys.readouterr().err
    # --force recomputes the stage and every stage after it
    assert main(["run", str(config), "stages.train-cls.epochs=2", "--force", "train-cls"]) == 0
    printed = capsys.readouterr().out
    assert "[train-cls] --force: removing" in printed and "[make-cam] --force: removing" in printed
    assert json.loads((out / "train-cls" / "stage.json").read_text())["options"]["--epochs"] == ["2"]
    assert sorted(p.name for p in (out / "make-cam").glob("*.npz")) == cams
    assert main(["run", str(config), "stages.train-cls.epochs=2"]) == 0


def test_a_damaged_stage_json_is_a_one_line_error(small_run, capsys):
    config, out = small_run
    assert main(["run", str(config), "stages.make-cam.enabled=false"]) == 0
    marker = out / "train-cls" / "stage.json"
    marker.write_text(marker.read_text()[:10])
    capsys.readouterr()
    assert main(["run", str(config), "stages.make-cam.enabled=false"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "stage.json is damaged" in err and "--force train-cls" in err


@pytest.mark.parametrize("override, message", [
    ("stages.train-cls.epochs=abc", "stages.train-cls: train-cls argument --epochs: 'abc' is not an integer"),
    ("stages.train-cls.dropout=2", "argument --dropout: must be in [0, 1), got 2"),
    ("stages.train-cls.momentum=-1", "argument --momentum: must be >= 0, got -1"),
    ("stages.train-cls.resize_long=[56, 48]", "argument --resize-long: 56 is larger than 48"),
])
def test_run_check_validates_values_and_accepts_the_flag_after_the_config(small_run, capsys, override,
                                                                          message):
    config, out = small_run
    assert main(["run", str(config), "--check", override]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0
    assert not (out / "train-cls").exists()
    assert main(["run", str(config), "--check", "stages.train-cls.epochs=3"]) == 0
    assert "--epochs 3" in capsys.readouterr().out
