"""The DeepLab stage: training on label maps (pseudo labels) and
multi-scale inference with optional dense CRF, writing label PNGs.

Training (:mod:`.train`) reads the images and a folder of label PNGs and
writes a run folder (``final.pt``, ``checkpoint.pt``, ``log.jsonl``);
inference (:mod:`.infer`) reads a trained network and the images of a split
and writes one label PNG per image.
"""
from .infer import segment_split
from .train import TRAIN_DEFAULTS, train_segmentation

__all__ = ["TRAIN_DEFAULTS", "segment_split", "train_segmentation"]
