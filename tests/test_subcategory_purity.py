"""Cluster purity (wsss_fast.eval.cluster_purity) and SC-CAM's per-round
purity against the demo data's hidden sub-types (eval-subcategories)."""
import json

import numpy as np
import pytest

from wsss_fast.cli import main
from wsss_fast.errors import DataError, UsageError
from wsss_fast.eval import cluster_purity
from wsss_fast.stages.subcategory_purity import purity_per_round


def test_purity_by_hand():
    # clusters 0: a a b; 1: b b; 2: c -> majority counts 2 + 2 + 1 of 6
    scores = cluster_purity([0, 0, 0, 1, 1, 2], ["a", "a", "b", "b", "b", "c"])
    assert scores["n"] == 6
    assert scores["purity"] == pytest.approx(5 / 6)
    assert scores["majority"] == pytest.approx(3 / 6)
    assert 0 < scores["nmi"] < 1


def test_purity_extremes():
    truth = ["a", "b", "c"] * 20
    perfect = cluster_purity([{"a": 5, "b": 1, "c": 7}[t] for t in truth], truth)
    assert perfect["purity"] == 1.0 and perfect["nmi"] == pytest.approx(1.0)
    one = cluster_purity([0] * len(truth), truth)
    assert one["purity"] == one["majority"] == pytest.approx(1 / 3) and one["nmi"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="one length"):
        cluster_purity([0, 1], ["a"])


def write_round(run, r, names, labels):
    (run / f"round{r}").mkdir(parents=True)
    with open(run / f"round{r}" / "subcategories.npz", "wb") as f:
        np.savez(f, names=np.array(names), labels=np.asarray(labels, dtype=np.float32))


def test_purity_per_round(tmp_path):
    voc, run = tmp_path / "voc", tmp_path / "run"
    voc.mkdir()
    (voc / "class_names.txt").write_text("background\ntop\nbag\n")
    images = {"i0": {"top": ["coat"]}, "i1": {"top": ["coat", "coat"], "bag": ["bag"]},
              "i2": {"top": ["shirt"]}, "i3": {"top": ["shirt", "coat"]}, "i4": {"bag": ["bag"]}}
    (voc / "subcategories.json").write_text(json.dumps(
        {"subtypes": {"top": ["coat", "shirt"], "bag": ["bag"]}, "images": images}))
    names = ["i0", "i1", "i2", "i3", "i4"]
    k = 2  # columns: top 0, top 1, bag 0, bag 1
    write_round(run, 1, names, [[1, 0, 0, 0], [0, 1, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]])
    write_round(run, 2, names, [[1, 0, 0, 0], [1, 0, 1, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])
    result = purity_per_round(run, voc)
    assert set(result["rounds"]) == {1, 2}
    assert set(result["rounds"][1]) == {"top"}  # bag has one sub-type; i3 mixes sub-types and is left out
    r1, r2 = result["rounds"][1]["top"], result["rounds"][2]["top"]
    assert r1["n"] == r2["n"] == 3 and r1["k"] == k
    assert r1["purity"] == pytest.approx(2 / 3) and r2["purity"] == pytest.approx(1.0)
    assert result["mean"][2]["purity"] == pytest.approx(1.0)
    out = tmp_path / "purity.json"
    main(["eval-subcategories", "--run", str(run), "--voc", str(voc), "--json", str(out)])
    assert json.loads(out.read_text())["rounds"]["2"]["top"]["purity"] == pytest.approx(1.0)


def test_purity_needs_rounds_and_subtypes(tmp_path):
    with pytest.raises(DataError, match="subcategories.json"):
        purity_per_round(tmp_path, tmp_path)
    (tmp_path / "subcategories.json").write_text(json.dumps({"subtypes": {}, "images": {}}))
    with pytest.raises(UsageError, match="no SC-CAM round"):
        purity_per_round(tmp_path, tmp_path)
