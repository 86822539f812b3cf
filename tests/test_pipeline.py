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
TINY = ["stages.train-cls.epochs=1", "stages.train-cls.backbone=scratch", "stages.train-cls.weights=null",
        "stages.train-cls.backbone_option={width: 4}", "stages.train-cls.crop=32",
        "stages.train-cls.resize_long=[32, 48]", "stages.train-cls.batch_size=8", "stages.train-cls.num_workers=0",
        "stages.train-aff.epochs=1", "stages.train-aff.crop=32", "stages.train-aff.batch_size=8",
        "stages.train-aff.num_workers=0", "stages.train-seg.epochs=1", "stages.train-seg.crop=32",
        "stages.train-seg.batch_size=8",
        "stages.train-seg.num_workers=0", "stages.make-cam.workers=0", "stages.rw.num_workers=0",
        "stages.rw-crf.num_workers=0", "stages.infer-seg.num_workers=0", "stages.infer-seg-crf.num_workers=0"]
# IRN's stages (the demo runs them with --compare), as tiny
TINY_IRN = ["stages.make-ir-labels={}", "stages.train-irn={init: '@train-cls', epochs: 1, crop: 48, batch_size: 8, "
            "num_workers: 0, radius: 5}", "stages.rw-irn={num_workers: 0}", "stages.eval-rw-irn={}"]
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


@pytest.mark.slow
def test_demo_compare(tmp_path, capsys):
    """--compare: the pipeline with IRN beside PSA, SC-CAM rounds from its
    classifier, one table with each round's CAM mIoU and cluster purity."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *DEMO, "--compare", "--rounds", "1", "--round-images", "6",
                 *TINY, *TINY_IRN]) == 0
    printed = capsys.readouterr().out
    table = json.loads((out / "compare.json").read_text())
    names = [row["name"] for row in table["rows"]]
    assert names[:4] == ["CAM", "CAM + RW", "CAM + RW + CRF", "CAM + IRN"]
    drs = ["DRS CAM", "DRS-dagger maps", "CAM + saliency", "Saliency max F (make-saliency)", "DRS + saliency",
           "DRS-dagger + saliency", "DRS-dagger pseudo labels (saliency)"]
    assert names[names.index("DRS CAM"):][:7] == drs
    values = {row["name"]: row["value"] for row in table["rows"]}
    assert all(0 <= values[name] <= 1 for name in drs)
    # DRS: the demo classifier with learnable DRS, its refinement from the classifier's backbone
    # (a scratch backbone has no ImageNet weights), DRS's squares, labels by the saliency rule
    drs_dir = out / "compare" / "drs"
    options = json.loads((drs_dir / "train-cls" / "stage.json").read_text())["options"]
    assert options["--method"] == ["drs"] and 'drs="learnable"' in options["--backbone-option"]
    refine = json.loads((drs_dir / "train-refine" / "stage.json").read_text())["options"]
    assert refine["--init"] == ["classifier"] and refine["--classifier"] == ["$OUT/train-cls"]
    labels = json.loads((drs_dir / "make-labels" / "stage.json").read_text())["options"]
    assert labels["--cam"] == ["$OUT/make-cam-refined"] and labels["--saliency"] == ["$OUT/make-saliency"]
    assert "DRS-dagger + saliency" in printed
    assert names[-3:] == ["SC-CAM round 0 CAM (6 train images)", "SC-CAM round 1 CAM (6 train images)",
                          "SC-CAM round 1 clusters (round 0) purity"]
    purity = table["rows"][-1]
    assert purity["floor"] <= purity["value"] <= 1 and set(purity["per_class"]) == {"top", "footwear"}
    assert len(list((out / "compare" / "sccam" / "round-cams" / "round1").glob("*.npz"))) == 6
    assert "SC-CAM round 1 clusters (round 0) purity" in printed
    # the SC-CAM rounds start from the pipeline's classifier
    stage = json.loads((out / "compare" / "sccam" / "train-cls" / "stage.json").read_text())
    assert stage["options"]["--round0"] == [str(out / "compare" / "train-cls")]
    assert main(["demo", "--out", str(out), *DEMO, "--compare", "--seeds", "1,2"]) == 2
    assert "--compare runs one seed" in capsys.readouterr().err


def test_drs_config_is_the_demo_classifier_with_drs(tmp_path):
    """DRS's comparison pipeline: the demo's classifier settings with learnable DRS (only the
    method differs), the refinement from the same ImageNet weights and seed; it validates."""
    from wsss_fast.config import CONFIG_DIR, load_config
    from wsss_fast.pipeline import validate, with_seed
    from wsss_fast.stages.compare import DRS_STAGES, drs_config

    from cam_fixtures import demo_root

    voc = demo_root(tmp_path / "data", n_train=4, size=32)
    demo = with_seed({**load_config(CONFIG_DIR / "demo.yaml", []), "voc": str(voc)}, 3)
    config = drs_config(demo, tmp_path / "drs")
    classifier, base = config["stages"]["train-cls"], demo["stages"]["train-cls"]
    assert classifier["backbone_option"] == {**base["backbone_option"], "drs": "learnable"}
    assert {k: v for k, v in classifier.items() if k not in ("method", "schedule", "nesterov", "backbone_option")} \
        == {k: v for k, v in base.items() if k not in ("method", "backbone_option")}
    assert classifier["method"] == "drs" and classifier["seed"] == 3
    refine = config["stages"]["train-refine"]
    assert refine["weights"] == "imagenet" and refine["seed"] == 3 and "init" not in refine
    assert list(config["stages"]) == ["train-cls", *DRS_STAGES]
    assert config["eval_split"] == "train" and config["out"] == str(tmp_path / "drs")
    assert demo["stages"]["train-cls"]["backbone_option"] == {"frozen_blocks": 8}  # not modified
    validate(config)


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
    for name in ("demo.yaml", "voc_sccam.yaml", "voc_drs.yaml", "voc_irn.yaml"):
        assert main(["run", str(CONFIG_DIR / name), f"voc={tmp_path / 'data'}", f"out={tmp_path / name}",
                     "train_split=train", "eval_split=train", "--check"]) == 0, name
        printed = capsys.readouterr().out
        assert "[train-cls] wsss-fast train-cls" in printed and "[eval-seg] wsss-fast eval" in printed


DRS_IRN = """
train_split: train
pseudo_labels: rw-irn
stages:
  train-cls: {method: drs, backbone: scratch, backbone_option: {width: 4, drs: learnable}, epochs: 1,
              batch_size: 8, crop: 32, resize_short: 48, num_workers: 0}
  make-cam: {workers: 0}
  train-refine: {epochs: 1, batch_size: 8, workers: 0, init: classifier, size: 48}
  make-cam-refined: {workers: 0}
  make-aff-labels: {workers: 1}
  train-aff: {epochs: 1, batch_size: 8, crop: 48, num_workers: 0}
  rw: {num_workers: 0}
  eval-rw: {}
  make-ir-labels: {workers: 1}
  train-irn: {init: "@train-cls", epochs: 1, batch_size: 8, crop: 48, radius: 5, num_workers: 0}
  rw-irn: {num_workers: 0}
  eval-rw-irn: {}
  train-seg: {epochs: 1, crop: 32, batch_size: 8, num_workers: 0, backbone: scratch, backbone_option: {width: 4}}
"""


@pytest.mark.slow
def test_drs_with_both_refinements(tmp_path, capsys):
    """A DRS classifier with its refinement network, then PSA's and IRN's
    random walks on the refined maps; DeepLab on IRN's labels (pseudo_labels)."""
    from wsss_fast.data.demo import make_demo_data

    make_demo_data(tmp_path / "data", n_train=16, n_val=4, size=48, progress=False)
    config = tmp_path / "drs_irn.yaml"
    config.write_text(DRS_IRN)
    common = ["run", str(config), f"voc={tmp_path / 'data'}", f"out={tmp_path / 'out'}"]
    assert main(common + ["--check"]) == 0
    lines = {line.split("]")[0][1:]: line for line in capsys.readouterr().out.splitlines()}
    refined = str(tmp_path / "out" / "make-cam-refined")
    assert f"--cam {refined}" in lines["make-ir-labels"] and f"--cam {refined}" in lines["make-aff-labels"]
    assert f"--cam {refined}" in lines["rw-irn"] and "--method irn" in lines["rw-irn"]
    assert f"--labels {tmp_path / 'out' / 'rw-irn'}" in lines["train-seg"]
    assert main(common) == 0
    table = {r["name"]: r["miou"] for r in json.loads((tmp_path / "out" / "summary.json").read_text())["table"]}
    assert set(table) == {"CAM + RW", "CAM + IRN"} and all(0 <= v <= 1 for v in table.values())


@pytest.mark.parametrize("choice, message", [("rw-irn", "'rw-irn' is not a stage of this config"),
                                             ("rw-crf-irn", "pseudo_labels must be one of")])
def test_pseudo_labels_choice_is_checked(tmp_path, capsys, choice, message):
    config = tmp_path / "c.yaml"
    config.write_text(f"voc: {tmp_path}\nout: {tmp_path / 'out'}\npseudo_labels: {choice}\n"
                      "stages:\n  rw: {model: m, cam: c}\n  train-seg: {}\n")
    assert main(["run", str(config), "--check"]) == 2
    assert message in capsys.readouterr().err


def test_seed_summary_and_seeded_config():
    from wsss_fast.pipeline import format_seed_table, summarise_seeds, with_seed

    config = {"voc": "v", "stages": {"train-cls": {"epochs": 1}, "make-cam": {}, "train-irn": None,
                                     "rw-irn": {}}}
    seeded = with_seed(config, 7)
    assert seeded["stages"] == {"train-cls": {"epochs": 1, "seed": 7}, "make-cam": {}, "train-irn": {"seed": 7},
                                "rw-irn": {}}
    assert config["stages"]["train-cls"] == {"epochs": 1}  # a copy
    runs = {s: {"table": [{"name": "CAM", "miou": m}, {"name": "CAM + IRN", "miou": i}], "total_seconds": 10.0}
            for s, m, i in [(0, 0.30, 0.40), (1, 0.32, None), (2, 0.34, 0.44)]}
    result = summarise_seeds(runs)
    cam, irn = result["rows"]
    assert cam["mean"] == pytest.approx(0.32) and cam["std"] == pytest.approx(0.02)
    assert (cam["min"], cam["max"]) == (0.30, 0.34)
    assert irn["mean"] == pytest.approx(0.42) and irn["values"][1] is None
    table = format_seed_table(result)
    assert "CAM + IRN" in table and "32.00" in table and "  -" in table
    assert "seed 2" in table and "run 2" in format_seed_table(result, column="run {}")


@pytest.mark.slow
def test_demo_with_seeds(tmp_path, capsys):
    off = [f"stages.{s}.enabled=false" for s in ("make-aff-labels", "train-aff", "rw", "eval-rw", "rw-crf",
                                                 "eval-rw-crf", "make-ir-labels", "train-irn", "rw-irn",
                                                 "eval-rw-irn", "train-seg", "infer-seg", "eval-seg",
                                                 "infer-seg-crf", "eval-seg-crf")]
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *DEMO, "--seeds", "3,4", *TINY, *off]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "seeds.json").read_text())
    assert result["seeds"] == [3, 4] and [r["name"] for r in result["rows"]] == ["CAM"]
    assert "mean" in printed and "seed 3" in printed
    logs = [json.loads((out / f"seed{s}" / "train-cls" / "log.jsonl").read_text().splitlines()[0]) for s in (3, 4)]
    assert [log["config"]["seed"] for log in logs] == [3, 4]
    assert main(["demo", "--out", str(out), *DEMO, "--seeds", "3,3"]) == 2
    assert "at least two different seeds" in capsys.readouterr().err


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
