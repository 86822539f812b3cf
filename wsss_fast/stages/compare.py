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

DRS, in ``OUT/compare/drs`` (a pipeline of its own): the demo classifier
with learnable DRS in the blocks it trains (same backbone, data and
optimisation, so only the method differs), its CAMs by DRS's procedure
(squares fused by maximum), classical saliency maps (``make-saliency``, no
labels) and their max F, and as DRS's paper measures them on the training
split: the CAMs and the refined maps (DRS-dagger, ``train-refine``) with
the saliency background, and the pseudo labels of DRS's rule. Beside them,
for the same footing: DRS's CAMs and refined maps at their best background
threshold (as the "CAM" row) and the pipeline's CAMs with the saliency
background.
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
# DRS on the demo (SPEC.md "DRS"). The classifier: the demo's, with DRS (its preset's step schedule
# would not decay within the demo's epochs, so the demo's poly schedule, without Nesterov).
DRS_CLASSIFIER = {"method": "drs", "schedule": "poly", "nesterov": False}
# DRS infers on squares of 256 / 320 / 384 px (0.8 / 1 / 1.2 x its 320 px crop); here 0.75 / 1 / 1.25 x
# the demo's 128 px images.
DRS_SIZES = [96, 128, 160]
DRS_STAGES = {
    "make-cam": {"sizes": DRS_SIZES},
    "make-saliency": {},
    "eval-saliency": {},
    "eval-cam": {"saliency": "@make-saliency"},
    # the paper's 15 epochs (lr x0.1 from the 5th and 10th) cut to 4, decays at the same fractions
    "train-refine": {"epochs": 4, "decay_at": [2, 3], "size": 128, "workers": 1},
    "make-cam-refined": {"sizes": DRS_SIZES},
    "eval-cam-refined": {"saliency": "@make-saliency"},
    "make-labels": {"saliency": "@make-saliency"},
    "eval-labels": {},
}
DRS_ROWS = {"Saliency max F": "Saliency max F (make-saliency)", "CAM": "DRS + saliency",
            "CAM (refined)": "DRS-dagger + saliency", "CAM pseudo labels": "DRS-dagger pseudo labels (saliency)"}


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


def drs_config(config: dict, out: Path) -> dict:
    """A pipeline config of DRS's stages (:data:`DRS_STAGES`) writing to
    ``out``, its classifier the demo's with learnable DRS in every block it
    trains; the refinement network starts from the classifier's pretrained
    weights (DRS: ImageNet) or, with none, from the classifier's backbone,
    and is seeded as the classifier."""
    classifier = dict((config.get("stages") or {})["train-cls"])
    options = {**(classifier.get("backbone_option") or {}), "drs": "learnable"}
    classifier.update(DRS_CLASSIFIER, backbone_option=options)
    stages = {"train-cls": classifier, **copy.deepcopy(DRS_STAGES)}
    refine = stages["train-refine"]
    refine.update({"weights": classifier["weights"]} if classifier.get("weights") else {"init": "classifier"})
    if "seed" in classifier:
        refine["seed"] = classifier["seed"]
    return {**{k: v for k, v in config.items() if k not in ("stages", "out", "pseudo_labels")},
            "out": str(out), "eval_split": config.get("train_split", "train"), "stages": stages}


def drs_rows(summary: dict, cams: Path, drs_dir: Path, voc_root: str, names: list[str]) -> list[dict]:
    """The DRS rows (module docstring) over ``names``: DRS's CAMs and refined
    maps at their best background threshold, the pipeline's CAMs ``cams``
    with the saliency background, then the DRS pipeline's rows renamed by
    :data:`DRS_ROWS`."""
    from ..data.voc import VOCRoot
    from ..eval import cam_sweep_summary
    from .labels import evaluate_with_saliency

    voc = VOCRoot(voc_root)
    gt, num_classes = voc.mask_dirs[0], voc.num_classes + 1
    swept = [(title, cam_sweep_summary(drs_dir / folder, gt, num_classes, names))
             for title, folder in (("DRS CAM", "make-cam"), ("DRS-dagger maps", "make-cam-refined"))]
    with_saliency = evaluate_with_saliency(cams, drs_dir / "make-saliency", gt, num_classes, names=names,
                                           progress=False)
    return [*({"name": title, "value": s["best"], "threshold": s["threshold"], "fixed": s["fixed"]}
              for title, s in swept),
            {"name": "CAM + saliency", "value": with_saliency["miou"]},
            *({"name": DRS_ROWS[r["name"]], "value": r["value"]} for r in summary["table"] if r["name"] in DRS_ROWS)]


def run_comparison(config: dict, out: str | Path, *, rounds: int = 2, round_images: int = 500,
                   force: list[str] | tuple = ()) -> dict:
    """Runs the comparison (module docstring); prints and returns the table."""
    from ..data.voc import VOCRoot
    from ..pipeline import run_pipeline

    out = Path(out) / "compare"
    summary = run_pipeline(comparison_config(config, out), force=force)
    if summary is None:  # not rank 0
        return {}
    sccam_dir, drs_dir = out / "sccam", out / "drs"
    run_pipeline(sccam_config(config, sccam_dir, out / "train-cls", rounds))
    drs_summary = run_pipeline(drs_config(config, drs_dir))
    train_names = VOCRoot(config["voc"]).split(config.get("train_split", "train"))
    names = train_names[:round_images]
    models = [(0, out / "train-cls" / FINAL)] + [(r, path) for r, path in round_models(sccam_dir / "train-cls")
                                                   if r > 0]
    cams = cam_miou_per_round(models, config["voc"], names, sccam_dir / "round-cams",
                              device=config.get("device") or "cpu")
    purity = purity_per_round(sccam_dir / "train-cls", config["voc"])
    rows = [{"name": r["name"], "value": r.get("value", r.get("miou"))} for r in summary["table"]
            if r["name"] in PIPELINE_ROWS]
    rows += drs_rows(drs_summary, out / "make-cam", drs_dir, config["voc"], train_names)
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
