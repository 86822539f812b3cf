"""The DeepLab stage: training on label maps (pseudo labels) and
multi-scale inference with optional dense CRF, writing label PNGs."""
from .infer import segment_split
from .train import TRAIN_DEFAULTS, train_segmentation

__all__ = ["TRAIN_DEFAULTS", "segment_split", "train_segmentation"]
