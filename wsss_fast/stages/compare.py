"""``wsss-fast demo --compare``: the references' alternatives side by side
on the demo data, one table.

Reads the demo dataset (with its hidden sub-types) and a pipeline config
(configs/demo.yaml and the user's overrides); writes, under ``OUT/compare``:
the whole pipeline with IRN's stages beside PSA's (``make-ir-labels``,
``train-irn``, ``rw-irn``, ``eval-rw-irn``, every folder of
:func:`wsss_fast.pipeline.run_pipeline`), SC-CAM's rounds in
``sccam/train-cls`` (round 0: the pipeline's classifier, imported with
``--round0``; rounds 1..R with the reference's sub-category loss, K and
lambda), each round's CAMs of the first N training images in
``sccam/round-cams/round<r>``, and the table as ``OUT/compare.json``.

What each row measures, as its paper does: PSA and IRN, the mIoU of their
random-walk pseudo labels on the training split (the CAMs are the same);
SC-CAM, the CAM mIoU of every round's classifier (on the first N training
images, the same for every round) and the purity of the clusters each round
trained on against the hidden sub-types (:mod:`.subcategory_purity`).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

from ..storage import write_text_atomic
from ..training import FINAL
from .subcategory_purity import cam_miou_per_round, purity_per_round, round_models

# IRN's stages on the demo's 128 px images (see configs/demo.yaml for the rest).
IRN_STAGES = {
    "make-ir-labels": {},
    "train-irn": {"init": "@train-cls", "epochs": 3, "batch_size": 16, "crop": 96, "radius": 5,
                  "num_workers": 1},
    "rw-irn": {"steps": "auto", "threshold": "auto"},  # IRN's 0.25 is set for ResNet-50's CAMs
    "eval-rw-irn": {},
}
# SC-CAM's own settings (SPEC.md: K = 10 sub-categories, lambda 5, each round from ImageNet weights).
SCCAM = {"subcategories": 10, "sub_weight": 5, "init_from": "imagenet"}
PIPELINE_ROWS = ("CAM", "CAM + RW", "CAM + RW + CRF", "CAM + IRN", "DeepLab", "DeepLab + CRF")


def comparison_config(config: dict, out: Path) -> dict:
    """The demo config with IRN's stages added, writing to ``out``."""
    config = copy.deepcopy(config)
    stages = dict(config.get("stages") or {})
    for name, options in IRN_STAGES.items():
        stages.setdefault(name, dict(options))
    config.update(stages=stages, out=str(out), pseudo_labels=config.get("pseudo_labels", "rw-crf"))
    return config


def sccam_config(config: dict, out: Path, round0: Path, rounds: int) -> dict:
    """A pipeline config of one stage, train-cls with SC-CAM's rounds from
    ``round0`` and the demo classifier's backbone and schedule."""
    base = dict((config.get("stages") or {})["train-cls"])
    base.update(method="sccam", rounds=rounds, round0=str(round0), **SCCAM)
    return {**{k: v for k, v in config.items() if k not in ("stages", "out", "pseudo_labels")},
            "out": str(out), "stages": {"train-cls": base}}


def run_comparison(config: dict, out: str | Path, *, rounds: int = 2, round_images: int = 500,
                   force: list[str] | tuple = ()) -> dict:
    """Runs the comparison (module docstring); prints and returns the table."""
    from ..data.voc import VOCRoot
    from ..pipeline import run_pipeline

    out = Path(out) / "compare"
    summary = run_pipeline(comparison_config(config, out), force=force)
    if summary is None:  # not rank 0
        return {}
    sccam_dir = out / "sccam"
    run_pipeline(sccam_config(config, sccam_dir, out / "train-cls", rounds))
    names = VOCRoot(config["voc"]).split(config.get("train_split", "train"))[:round_images]
    models = [(0, out / "train-cls" / FINAL)] + [(r, path) for r, path in round_models(sccam_dir / "train-cls")
                                                   if r > 0]
    cams = cam_miou_per_round(models, config["voc"], names, sccam_dir / "round-cams",
                              device=config.get("device") or "cpu")
    purity = purity_per_round(sccam_dir / "train-cls", config["voc"])
    rows = [{"name": r["name"], "value": r.get("value", r.get("miou"))} for r in summary["table"]
            if r["name"] in PIPELINE_ROWS]
    for r, scores in cams.items():
        rows.append({"name": f"SC-CAM round {r} CAM ({len(names)} train images)", "value": scores["best"],
                     "threshold": scores["threshold"], "fixed": scores["fixed"]})
    for r, mean in purity["mean"].items():
        rows.append({"name": f"SC-CAM round {r} clusters (round {r - 1}) purity", "value": mean["purity"],
                     "floor": mean["majority"], "nmi": mean["nmi"],
                     "per_class": {c: s["purity"] for c, s in purity["rounds"][r].items()}})
    table = {"rows": rows, "pipeline_seconds": summary["total_seconds"], "sccam_rounds": rounds,
             "round_images": len(names), "purity": purity}
    write_text_atomic(Path(out).parent / "compare.json", json.dumps(table, indent=1) + "\n")
    print(format_comparison(table))
    return table


def format_comparison(table: dict) -> str:
    """The comparison's rows as text: value in %, with the extra figures."""
    lines = [f"{'result':<44} {'value':>7}", "-" * 52]
    for row in table["rows"]:
        value = "-" if row["value"] is None else f"{100 * row['value']:.2f}"
        extra = ""
        if "floor" in row:
            extra = f"  (floor {100 * row['floor']:.1f}, NMI {row['nmi']:.3f})"
        elif "threshold" in row:
            extra = f"  (best threshold {row['threshold']:g}; at 0.15: {100 * row['fixed']['0.15']:.2f})"
        lines.append(f"{row['name']:<44} {value:>7}{extra}")
    return "\n".join(lines)
