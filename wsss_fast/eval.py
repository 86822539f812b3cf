"""Segmentation and CAM evaluation with the PASCAL VOC conventions of the
reference code (see SPEC.md, "PASCAL VOC 2012 conventions").

- One confusion matrix accumulated over the whole split (rows ground truth,
  columns prediction); pixels whose ground truth is 255 are ignored.
- IoU_c = TP / (TP + FP + FN); mIoU = mean over the classes with a non-zero
  denominator (NaN for a class absent from both ground truth and prediction,
  left out of the mean, like the references' ``np.nanmean``). Precision,
  recall and F-score per class, pixel accuracy = trace / total. All metrics
  are fractions in [0, 1].
- A predicted 255 (the ignore label of pseudo labels) counts as background
  (IRN) unless ``void_pred="exclude"``, which leaves those pixels out and
  reports ``coverage``, the fraction of evaluated pixels that had a label.
  Any other value outside 0..C-1 is an error.
- CAMs: label = argmax over [threshold, CAM_1..CAM_K] (background wins ties,
  as with ``np.argmax`` of the padded array in IRN; compared in float32). A
  sweep over background thresholds is computed in one pass over the data.
- Saliency maps (:class:`SaliencyMetrics`): class-agnostic, against the
  foreground of the masks (any object class; 255 ignored); max F-measure
  over 256 thresholds and adaptive-threshold F-measure (beta^2 = 0.3),
  MAE, all pooled over the pixels of the split.
"""
from __future__ import annotations

import contextlib
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from .cpu import available_cores
from .errors import DataError
from .data.voc import CLASS_NAMES_FILE, read_class_names
from .palette import VOID
from .parallel import ordered_map
from .storage import ScoreMap, load_label_png, load_scores

REFERENCE_THRESHOLDS = (0.15, 0.2, 0.25)  # SC-CAM / IRN CAMs, PSA, IRN after random walk
CAM_SWEEP = "0:0.6:0.01"  # eval-cam's background thresholds (START:STOP:STEP)
VOID_PRED_MODES = ("background", "exclude")


def _as_long(x, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    return t.to(device=device, dtype=torch.int64)


def _check_gt(gt: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mask of the pixels to evaluate; raises ValueError on a ground-truth
    value that is neither a class nor 255."""
    valid = gt != VOID
    bad = valid & ((gt < 0) | (gt >= num_classes))
    if bad.any():
        raise ValueError(f"ground truth holds value {int(gt[bad][0])}, outside 0..{num_classes - 1} and 255")
    return valid


def scores_from_confusion(confusion) -> dict:
    """Metrics of a (C, C) confusion matrix (rows gt, columns prediction).

    Returns a dict of fractions: ``iou``, ``precision``, ``recall``,
    ``fscore`` (lists of C floats, NaN where undefined), ``miou``,
    ``mean_precision``, ``mean_recall``, ``mean_fscore`` (NaN-means),
    ``pixel_accuracy``, and ``pixels`` (int, pixels counted).
    """
    conf = np.asarray(torch.as_tensor(confusion).cpu(), dtype=np.float64)
    tp = np.diag(conf)
    gt_total, pred_total = conf.sum(axis=1), conf.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = tp / (gt_total + pred_total - tp)
        precision = tp / pred_total
        recall = tp / gt_total
        fscore = 2 * precision * recall / (precision + recall)
        fscore = np.where((precision == 0) & (recall == 0), 0.0, fscore)
    total = conf.sum()

    def nanmean(v):
        return float(np.nanmean(v)) if np.isfinite(v).any() else math.nan

    return {"miou": nanmean(iou), "iou": iou.tolist(), "precision": precision.tolist(),
            "recall": recall.tolist(), "fscore": fscore.tolist(),
            "mean_precision": nanmean(precision), "mean_recall": nanmean(recall),
            "mean_fscore": nanmean(fscore),
            "pixel_accuracy": float(tp.sum() / total) if total else math.nan, "pixels": int(total)}


class ConfusionMatrix:
    """Streaming (C, C) int64 confusion matrix of label maps, on any torch device.

    Args:
        num_classes: C, including background (21 for VOC).
        device: where the counting runs ("cuda" to count on a GPU).
        void_pred: "background" counts a predicted 255 as class 0 (IRN);
            "exclude" leaves those pixels out and tracks :attr:`coverage`.
    """

    def __init__(self, num_classes: int, *, device: torch.device | str = "cpu",
                 void_pred: str = "background"):
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if void_pred not in VOID_PRED_MODES:
            raise ValueError(f"void_pred must be one of {VOID_PRED_MODES}, got {void_pred!r}")
        self.num_classes = num_classes
        self.device = torch.device(device)
        self.void_pred = void_pred
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=self.device)
        self.evaluated_pixels = 0  # pixels with a ground-truth class
        self.void_pred_pixels = 0  # of those, predicted 255
        self.num_images = 0

    def update(self, pred, gt) -> None:
        """Adds one label map (or a batch of them): ``pred`` and ``gt`` integer
        arrays or tensors of the same shape, values 0..C-1 or 255."""
        pred, gt = _as_long(pred, self.device), _as_long(gt, self.device)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != ground truth shape {tuple(gt.shape)}")
        c = self.num_classes
        valid = _check_gt(gt, c)
        void = pred == VOID
        bad = ~void & ((pred < 0) | (pred >= c))
        if bad.any():
            raise ValueError(f"prediction holds value {int(pred[bad][0])}, outside 0..{c - 1} and 255")
        void_valid = int((void & valid).sum())
        self.evaluated_pixels += int(valid.sum())
        self.void_pred_pixels += void_valid
        if self.void_pred == "background":
            pred = pred.masked_fill(void, 0)
        else:
            valid &= ~void
        index = gt[valid] * c + pred[valid]
        self.matrix += torch.bincount(index, minlength=c * c).view(c, c)
        self.num_images += 1 if pred.dim() <= 2 else int(np.prod(pred.shape[:-2]))

    @property
    def coverage(self) -> float:
        """Fraction of evaluated pixels whose prediction is not 255."""
        if not self.evaluated_pixels:
            return math.nan
        return 1.0 - self.void_pred_pixels / self.evaluated_pixels

    def scores(self) -> dict:
        """:func:`scores_from_confusion` plus ``num_images``, ``coverage`` and
        the ``void_pred`` mode."""
        out = scores_from_confusion(self.matrix)
        out.update(num_images=self.num_images, coverage=self.coverage, void_pred=self.void_pred)
        return out


def cam_max_and_label(scores: ScoreMap, device: torch.device | str = "cpu"
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pixel, the largest CAM value (float32; -inf with no class) and the
    label of that CAM (int64; first channel on ties)."""
    data = torch.as_tensor(scores.data, dtype=torch.float32, device=device)
    if data.shape[0] == 0:
        shape = data.shape[1:]
        return (torch.full(shape, -math.inf, device=device),
                torch.zeros(shape, dtype=torch.int64, device=device))
    if (torch.as_tensor(scores.keys) == 0).any():
        raise ValueError("CAM keys must be object classes (1..C); got background (0)")
    best, arg = data.max(dim=0)
    return best, torch.as_tensor(scores.keys, device=device)[arg]


def cam_to_label(scores: ScoreMap, threshold: float) -> np.ndarray:
    """(H, W) uint8 label map: argmax over [threshold, CAMs], background on ties."""
    best, label = cam_max_and_label(scores)
    thr = torch.tensor(threshold, dtype=torch.float32)
    return torch.where(best > thr, label, 0).to(torch.uint8).numpy()


class ThresholdSweep:
    """CAM evaluation at many background thresholds in one pass.

    Each pixel is counted once by (number of thresholds below its best CAM
    value, gt, CAM label); the confusion matrix of threshold k then sums the
    pixels whose best value exceeds it as their CAM label and the rest as
    background. Exactly equal to evaluating :func:`cam_to_label` per threshold.
    """

    def __init__(self, thresholds: Iterable[float], num_classes: int, *,
                 device: torch.device | str = "cpu"):
        values = sorted({float(t) for t in thresholds})
        if not values:
            raise ValueError("at least one threshold is needed")
        self.thresholds = values
        self.num_classes = num_classes
        self.device = torch.device(device)
        self._thr = torch.tensor(values, dtype=torch.float32, device=self.device)
        self._counts = torch.zeros((len(values) + 1) * num_classes * num_classes, dtype=torch.int64,
                                   device=self.device)
        self.num_images = 0

    def update(self, scores: ScoreMap, gt) -> None:
        gt = _as_long(gt, self.device)
        best, label = cam_max_and_label(scores, self.device)
        if best.shape != gt.shape:
            raise ValueError(f"CAM size {tuple(best.shape)} != ground truth size {tuple(gt.shape)}")
        c = self.num_classes
        if label.numel() and int(label.max()) >= c:
            raise ValueError(f"CAM key {int(label.max())} is outside 1..{c - 1}")
        valid = _check_gt(gt, c)
        below = torch.searchsorted(self._thr, best[valid].contiguous())  # thresholds < best
        index = (below * c + gt[valid]) * c + label[valid]
        self._counts += torch.bincount(index, minlength=self._counts.numel())
        self.num_images += 1

    def confusions(self) -> torch.Tensor:
        """(T, C, C) int64 confusion matrices, one per threshold (sorted)."""
        c = self.num_classes
        counts = self._counts.view(-1, c, c)
        at_least = counts.flip(0).cumsum(0).flip(0)  # [j] = pixels with >= j thresholds below
        foreground = at_least[1:]  # threshold k: pixels with more than k thresholds below
        background = at_least[0] - foreground
        out = foreground.clone()
        out[:, :, 0] += background.sum(dim=2)
        return out

    def scores(self) -> list[dict]:
        """Per threshold: ``threshold`` plus :func:`scores_from_confusion`."""
        return [{"threshold": t, **scores_from_confusion(conf), "num_images": self.num_images}
                for t, conf in zip(self.thresholds, self.confusions())]


def best_of_sweep(scores: Sequence[dict]) -> dict:
    """The entry of a threshold sweep's scores (:meth:`ThresholdSweep.scores`
    or a part of them) with the highest mIoU, NaN counting as lowest; the
    first such threshold on a tie. Chosen on the ground truth it was scored
    on."""
    return max(scores, key=lambda r: -1.0 if math.isnan(r["miou"]) else r["miou"])


def cam_sweep_summary(cam_dir: str | os.PathLike, gt_dir: str | os.PathLike, num_classes: int,
                      names: Sequence[str] | None = None) -> dict:
    """eval-cam's figures of a CAM folder: {"best": the best mIoU over
    :data:`CAM_SWEEP`, "threshold": its threshold (chosen on this ground
    truth), "fixed": {"0.15": mIoU, ...} at :data:`REFERENCE_THRESHOLDS`}."""
    sweep = evaluate_cam_dir(cam_dir, gt_dir, num_classes, names=names, progress=False,
                             thresholds=parse_sweep(CAM_SWEEP) + list(REFERENCE_THRESHOLDS))
    scores = sweep.scores()
    best = best_of_sweep(scores)
    miou = {s["threshold"]: s["miou"] for s in scores}
    return {"best": best["miou"], "threshold": best["threshold"],
            "fixed": {f"{t:g}": miou[t] for t in REFERENCE_THRESHOLDS}}


def parse_sweep(spec: str) -> list[float]:
    """"start:stop:step" -> thresholds from start to stop inclusive, rounded
    to 10 decimals (so 0.15 is the literal 0.15)."""
    try:
        start, stop, step = (float(v) for v in spec.split(":"))
    except ValueError:
        raise ValueError(f"sweep must be start:stop:step, e.g. 0:0.6:0.01, got {spec!r}") from None
    if step <= 0 or stop < start:
        raise ValueError(f"sweep {spec!r}: need step > 0 and stop >= start")
    count = int(math.floor((stop - start) / step + 1e-9)) + 1
    return [round(start + i * step, 10) for i in range(count)]


def names_in(directory: str | os.PathLike, suffix: str) -> list[str]:
    """Sorted stems of the ``*<suffix>`` files in a directory (hidden files skipped)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory} is not a directory")
    names = sorted(p.name[:-len(suffix)] for p in directory.iterdir()
                   if p.name.endswith(suffix) and not p.name.startswith("."))
    if not names:
        raise DataError(f"no *{suffix} files in {directory}")
    return names


def _loaded(names: Sequence[str], load: Callable[[str], object], desc: str,
            progress: bool) -> Iterator[tuple[str, object]]:
    """(name, load(name)) in order, decoded by a few threads at most a few
    images ahead of use (bounded memory on splits of any size)."""
    workers = min(4, available_cores())
    with ThreadPoolExecutor(max_workers=workers) as pool:
        loaded = ordered_map(pool, load, names, ahead=2 * workers)
        yield from zip(names, tqdm(loaded, total=len(names), desc=desc, unit="img",
                                   disable=not progress))


@contextlib.contextmanager
def _one_torch_thread(device: torch.device | str) -> Iterator[None]:
    """On CPU, counts with one torch thread: the per-image ops are small, and
    intra-op threads only contend with the decoding threads (measured 0.7 ms
    instead of 12 ms per 128 px image on 2 busy cores)."""
    if torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _about(name: str) -> Iterator[None]:
    """Turns a ValueError about one image's values into a DataError naming it."""
    try:
        yield
    except ValueError as exc:
        raise DataError(f"{name}: {exc}") from exc


def evaluate_labels(names: Sequence[str], load: Callable[[str], tuple], num_classes: int, *,
                    void_pred: str = "background", device: torch.device | str = "cpu",
                    progress: bool = True, desc: str = "eval") -> dict:
    """Evaluates the (prediction, ground truth) label maps ``load(name)``
    gives for every name; returns :meth:`ConfusionMatrix.scores`. An error
    about one image's values names it."""
    confusion = ConfusionMatrix(num_classes, device=device, void_pred=void_pred)
    with _one_torch_thread(device):
        for name, (pred, gt) in _loaded(names, load, desc, progress):
            with _about(name):
                confusion.update(pred, gt)
    return confusion.scores()


def evaluate_label_dirs(pred_dir: str | os.PathLike, gt_dir: str | os.PathLike, num_classes: int, *,
                        names: Sequence[str] | None = None, void_pred: str = "background",
                        device: torch.device | str = "cpu", progress: bool = True) -> dict:
    """Evaluates ``<pred_dir>/<name>.png`` against ``<gt_dir>/<name>.png`` for
    every name (default: every PNG in ``pred_dir``). Returns
    :meth:`ConfusionMatrix.scores`."""
    names = list(names) if names is not None else names_in(pred_dir, ".png")

    def load(name):
        return (load_label_png(Path(pred_dir) / f"{name}.png"),
                load_label_png(Path(gt_dir) / f"{name}.png"))

    return evaluate_labels(names, load, num_classes, void_pred=void_pred, device=device, progress=progress)


def evaluate_cam_dir(cam_dir: str | os.PathLike, gt_dir: str | os.PathLike, num_classes: int, *,
                     thresholds: Iterable[float], names: Sequence[str] | None = None,
                     device: torch.device | str = "cpu", progress: bool = True) -> ThresholdSweep:
    """Sweeps background thresholds over ``<cam_dir>/<name>.npz`` (see
    :mod:`wsss_fast.storage`) against ``<gt_dir>/<name>.png``."""
    names = list(names) if names is not None else names_in(cam_dir, ".npz")
    sweep = ThresholdSweep(thresholds, num_classes, device=device)

    def load(name):
        return load_scores(Path(cam_dir) / f"{name}.npz"), load_label_png(Path(gt_dir) / f"{name}.png")

    with _one_torch_thread(device):
        for name, (scores, gt) in _loaded(names, load, "eval-cam", progress):
            with _about(name):
                sweep.update(scores, gt)
    return sweep


def class_names_for(gt_dir: str | os.PathLike, num_classes: int | None) -> tuple[str, ...]:
    """Class names of a ground-truth folder: those of the VOC-style root it
    sits in (its ``class_names.txt``, else VOC's 21), unless ``num_classes``
    says otherwise, in which case a root with a class_names.txt is an error
    and other names are ``class<i>``."""
    root = Path(gt_dir).resolve().parent
    names = read_class_names(root)
    if num_classes is None or num_classes == len(names):
        return names
    if (root / CLASS_NAMES_FILE).is_file():
        raise DataError(f"--num-classes {num_classes} but {root / CLASS_NAMES_FILE} lists "
                        f"{len(names)} classes")
    return ("background",) + tuple(f"class{i}" for i in range(1, num_classes))


def format_table(scores: dict, class_names: Sequence[str]) -> str:
    """Per-class IoU, precision, recall and F-score (in %) and the means."""
    def pct(v):
        return "   -  " if v is None or not math.isfinite(v) else f"{100 * v:6.2f}"

    width = max(len("class"), *(len(n) for n in class_names))
    lines = [f"{'class':<{width}}     IoU   prec recall  F-score"]
    for i, name in enumerate(class_names):
        lines.append(f"{name:<{width}}  {pct(scores['iou'][i])} {pct(scores['precision'][i])} "
                     f"{pct(scores['recall'][i])} {pct(scores['fscore'][i])}")
    lines.append(f"{'mean':<{width}}  {pct(scores['miou'])} {pct(scores['mean_precision'])} "
                 f"{pct(scores['mean_recall'])} {pct(scores['mean_fscore'])}")
    lines.append(f"pixel accuracy {pct(scores['pixel_accuracy'])}%  images {scores['num_images']}")
    return "\n".join(lines)


def cluster_purity(clusters: Sequence[int], truth: Sequence[str]) -> dict:
    """How well clusters match hidden categories (SC-CAM's sub-categories).

    Args:
        clusters: the cluster index of each of n items.
        truth: the hidden category of each item (same length).

    Returns ``{"n", "purity", "majority", "nmi"}``: purity = the fraction of
    items whose cluster's most frequent category is their own; majority =
    the purity of one cluster holding everything (the most frequent
    category's share), the floor any clustering reaches; nmi = normalised
    mutual information (arithmetic mean normalisation, scikit-learn's), 0
    for independent assignments and 1 for identical partitions. Purity
    rises with the number of clusters by itself, NMI does not.
    """
    from sklearn.metrics import normalized_mutual_info_score

    clusters, truth = np.asarray(clusters), np.asarray(truth)
    if clusters.shape != truth.shape or clusters.ndim != 1 or clusters.size == 0:
        raise ValueError(f"cluster_purity: clusters and truth must be non-empty and of one length, got "
                         f"{clusters.shape} and {truth.shape}")
    _, truth_codes = np.unique(truth, return_inverse=True)
    _, cluster_codes = np.unique(clusters, return_inverse=True)
    table = np.zeros((cluster_codes.max() + 1, truth_codes.max() + 1), dtype=np.int64)
    np.add.at(table, (cluster_codes, truth_codes), 1)
    n = int(clusters.size)
    return {"n": n, "purity": float(table.max(axis=1).sum() / n),
            "majority": float(table.sum(axis=0).max() / n),
            "nmi": float(normalized_mutual_info_score(truth_codes, cluster_codes))}


SALIENCY_BETA2 = 0.3  # salient-object detection's F-measure weight (precision counts more)
SALIENCY_LEVELS = 256


def f_measure(precision, recall, beta2: float = SALIENCY_BETA2):
    """(1 + beta2) P R / (beta2 P + R), elementwise on arrays (or floats);
    0 where P and R are both 0, NaN where either is NaN."""
    precision, recall = np.asarray(precision, np.float64), np.asarray(recall, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = (1 + beta2) * precision * recall / (beta2 * precision + recall)
    return np.where((precision == 0) & (recall == 0), 0.0, f)


def saliency_histogram(saliency, gt) -> np.ndarray:
    """(2, 256) int64 pixel counts of one image by (ground truth, saliency
    value): row 0 background pixels (gt 0), row 1 foreground pixels (any gt
    other than 0 and 255); gt 255 is left out.

    Args:
        saliency: (H, W) integer saliency map, values 0..255 (8-bit PNG grey levels).
        gt: (H, W) integer class indices, 0 background, 255 void.

    Raises ValueError on different shapes or a saliency value outside 0..255.
    """
    saliency, gt = np.asarray(saliency), np.asarray(gt)
    if saliency.shape != gt.shape or saliency.ndim != 2:
        raise ValueError(f"saliency map shape {saliency.shape} != ground truth shape {gt.shape}")
    if not np.issubdtype(saliency.dtype, np.integer):
        raise ValueError(f"saliency map must hold integers 0..255, got {saliency.dtype}")
    if saliency.size and (saliency.min() < 0 or saliency.max() > 255):
        raise ValueError(f"saliency value {int(saliency.min() if saliency.min() < 0 else saliency.max())} "
                         "is outside 0..255")
    valid = gt != VOID
    index = saliency[valid].astype(np.int64) + SALIENCY_LEVELS * (gt[valid] != 0)
    return np.bincount(index, minlength=2 * SALIENCY_LEVELS).reshape(2, SALIENCY_LEVELS)


class SaliencyMetrics:
    """Streaming quality of saliency maps against the foreground of
    ground-truth masks (salient-object detection's measures), from
    per-image histograms (:func:`saliency_histogram`): O(pixels) per image,
    O(256) to score.

    Units: saliency in grey levels 0..255 (scaled to [0, 1] for MAE); every
    score a fraction in [0, 1]. Averaging: everything is pooled over the
    non-void pixels of all images (each image weighs by its pixel count), not
    averaged per image as many salient-object benchmarks do; with images of
    one size and no void pixels the MAE is the same either way.

    - Curve: at threshold t = 0..255 a pixel is salient where its value is
      > t (the rule DRS's labels apply, so a threshold carries over to
      ``--saliency-threshold``; t = 255 marks nothing salient: precision 0).
      Precision(t) = TP / (TP + FP) (0 when nothing is salient), recall(t) =
      TP / foreground pixels, with TP, FP summed over all images at that t.
    - ``max_f``: the largest F-measure (:func:`f_measure`, beta^2 = 0.3) of
      the curve, and the threshold that reaches it (chosen on this ground
      truth: a diagnostic, not a setting to tune on it).
    - ``adaptive_f``: each image binarised at its own threshold, value >=
      min(2 x its mean saliency, 255) (Achanta et al., CVPR 2009; the mean
      over all of the image's pixels, void included, since it belongs to
      the map), TP and FP summed over the images, one F-measure.
    - ``mae``: mean |saliency / 255 - foreground| over the pixels.

    Scores are NaN when the images hold no foreground pixel (recall
    undefined) or no pixel at all.
    """

    def __init__(self, beta2: float = SALIENCY_BETA2):
        if not beta2 > 0:
            raise ValueError(f"beta2 must be > 0, got {beta2}")
        self.beta2 = beta2
        self.histogram = np.zeros((2, SALIENCY_LEVELS), np.int64)
        self.adaptive = np.zeros(2, np.int64)  # (TP, FP) at each image's adaptive threshold
        self.num_images = 0

    def update(self, saliency, gt) -> None:
        """Adds one image: ``saliency`` (H, W) values 0..255, ``gt`` (H, W)
        class indices (0 background, 255 void)."""
        hist = saliency_histogram(saliency, gt)
        saliency = np.asarray(saliency)
        threshold = min(2.0 * float(saliency.mean()), 255.0) if saliency.size else 255.0
        first = int(math.ceil(threshold))  # integer values >= threshold
        self.adaptive += hist[::-1, first:].sum(axis=1)  # rows flipped: (foreground, background)
        self.histogram += hist
        self.num_images += 1

    def scores(self) -> dict:
        """``max_f``, ``max_f_threshold`` (salient where > it), ``precision``
        and ``recall`` there; ``adaptive_f``, ``adaptive_precision``,
        ``adaptive_recall``; ``mae``; ``curve`` (``threshold``,
        ``precision``, ``recall``, ``f``: lists of 256); ``beta2``,
        ``pixels``, ``foreground_pixels``, ``num_images``, ``averaging``."""
        background, foreground = self.histogram
        # pixels with value > t, for t = 0..255: suffix sums from t + 1
        tp = np.concatenate([np.cumsum(foreground[::-1])[::-1][1:], [0]])
        fp = np.concatenate([np.cumsum(background[::-1])[::-1][1:], [0]])
        fg_total, pixels = int(foreground.sum()), int(self.histogram.sum())
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
            recall = tp / fg_total if fg_total else np.full(SALIENCY_LEVELS, math.nan)
        f = f_measure(precision, recall, self.beta2)
        best = int(np.argmax(f)) if fg_total else None
        a_tp, a_fp = (int(v) for v in self.adaptive)
        a_precision = a_tp / (a_tp + a_fp) if a_tp + a_fp else 0.0
        a_recall = a_tp / fg_total if fg_total else math.nan
        levels = np.arange(SALIENCY_LEVELS) / (SALIENCY_LEVELS - 1)
        error = (background * levels).sum() + (foreground * (1 - levels)).sum()
        return {
            "max_f": float(f[best]) if best is not None else math.nan,
            "max_f_threshold": best,
            "precision": float(precision[best]) if best is not None else math.nan,
            "recall": float(recall[best]) if best is not None else math.nan,
            "adaptive_f": float(f_measure(a_precision, a_recall, self.beta2)),
            "adaptive_precision": a_precision, "adaptive_recall": a_recall,
            "mae": float(error / pixels) if pixels else math.nan,
            "beta2": self.beta2,
            "curve": {"threshold": list(range(SALIENCY_LEVELS)), "precision": precision.tolist(),
                      "recall": recall.tolist(), "f": f.tolist()},
            "pixels": pixels, "foreground_pixels": fg_total, "num_images": self.num_images,
            "averaging": "pooled over the non-void pixels of all images",
        }


def evaluate_saliency(names: Sequence[str], load: Callable[[str], tuple], *, beta2: float = SALIENCY_BETA2,
                      progress: bool = True, desc: str = "eval-saliency") -> dict:
    """Scores the (saliency map, ground truth) pairs ``load(name)`` gives
    for every name (:class:`SaliencyMetrics`); returns its scores. An error
    about one image's values names it."""
    metrics = SaliencyMetrics(beta2)
    for name, (saliency, gt) in _loaded(names, load, desc, progress):
        with _about(name):
            metrics.update(saliency, gt)
    return metrics.scores()


CAM_HISTOGRAM_BINS = 256


def cam_maximum_histogram(cam_dir: str | os.PathLike, names: Sequence[str], *,
                          bins: int = CAM_HISTOGRAM_BINS, progress: bool = False) -> np.ndarray:
    """(bins,) int64 histogram over [0, 1] of every pixel's largest CAM value
    (max over the image's classes of the max-normalised maps) in the CAM
    files ``cam_dir/<name>.npz``. Needs no ground truth."""
    hist = np.zeros(bins, dtype=np.int64)
    for _, scores in _loaded(names, lambda name: load_scores(Path(cam_dir) / f"{name}.npz"), "CAM histogram",
                             progress):
        top = scores.data.max(axis=0) if len(scores.keys) else np.zeros(scores.data.shape[1:], np.float32)
        hist += np.histogram(np.asarray(top, dtype=np.float32), bins=bins, range=(0.0, 1.0))[0]
    return hist


def otsu_threshold(hist: np.ndarray) -> float:
    """Otsu's threshold of a histogram over [0, 1] (equal-width bins): the
    bin edge that maximises the between-class variance of the two sides,
    w0 w1 (mu0 - mu1)^2. Applied to :func:`cam_maximum_histogram`, it splits
    the pixels into a low (background-like) and a high (object-like) mode of
    the CAMs without ground truth."""
    hist = np.asarray(hist, dtype=np.float64)
    if hist.ndim != 1 or hist.size < 2 or hist.sum() <= 0 or (hist < 0).any():
        raise ValueError(f"otsu_threshold: needs a 1-D histogram of >= 2 non-negative bins with a positive "
                         f"total, got shape {hist.shape} and total {hist.sum() if hist.size else 0}")
    p = hist / hist.sum()
    centres = (np.arange(hist.size) + 0.5) / hist.size
    w0 = np.cumsum(p)[:-1]  # split after bin i
    mu0 = np.cumsum(p * centres)[:-1]
    total = float((p * centres).sum())
    w1 = 1.0 - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = np.where((w0 > 0) & (w1 > 0), (total * w0 - mu0) ** 2 / (w0 * w1), -1.0)
    return float((np.argmax(between) + 1) / hist.size)
