"""Datasets: the VOC layout reader, a torch Dataset over it, and the bundled
demo dataset written in the same layout.

``VOCRoot`` reads a VOCdevkit/VOC2012 directory (images, masks, split lists,
image-level labels); ``VOCSegmentation`` serves a split to training and
inference; ``make_demo_data`` writes the demo dataset.
"""
from .dataset import CorruptImageWarning, VOCSegmentation, collate_skip_none
from .demo import make_demo_data
from .cls_labels import load_cls_labels
from .voc import (CorruptImageError, VOCRoot, bundled_split, labels_from_mask, parse_split_list,
                  read_class_names)

__all__ = ["CorruptImageError", "CorruptImageWarning", "VOCRoot", "VOCSegmentation",
           "bundled_split", "collate_skip_none", "labels_from_mask", "load_cls_labels", "make_demo_data",
           "parse_split_list", "read_class_names"]
