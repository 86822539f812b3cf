"""Networks: backbones (loaded from user-supplied weight files), the CAM
classifier and the heads of the later stages."""
from .backbone import IMAGENET_MEAN, IMAGENET_STD, Backbone, param_groups
from .classifier import Classifier
from .registry import BACKBONES, build_backbone
from .weights import LoadReport, WeightsError, load_weights, read_state_dict

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Backbone", "param_groups", "Classifier", "BACKBONES",
           "build_backbone", "LoadReport", "WeightsError", "load_weights", "read_state_dict"]
