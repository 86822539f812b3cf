"""Networks: backbones (loaded from user-supplied weight files), the CAM
classifier and the heads of the later stages."""
from .backbone import IMAGENET_MEAN, IMAGENET_STD, Backbone, param_groups
from .checkpoints import load_cam_model, load_classifier, load_refine
from .classifier import Classifier
from .refine import RefineNet
from .registry import BACKBONES, build_backbone
from .weights import LoadReport, WeightsError, load_weights, read_state_dict

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Backbone", "param_groups", "Classifier", "BACKBONES",
           "build_backbone", "LoadReport", "WeightsError", "load_weights", "read_state_dict",
           "RefineNet", "load_cam_model", "load_classifier", "load_refine"]
