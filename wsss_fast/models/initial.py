"""Where a stage's backbone starts from: a trained classifier (train-cls),
a weights file, or random initialisation (train-aff and train-seg)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UsageError
from .backbone import Backbone
from .checkpoints import read_checkpoint
from .registry import build_backbone
from .weights import load_weights


@dataclass
class BackboneInit:
    """Where the backbone comes from.

    ``classifier``: a train-cls final.pt (or its folder); it fixes the
    backbone's name and options and, unless ``weights`` is given, its
    weights. ``name`` / ``options``: the backbone to build (with a
    classifier: only to confirm its name). ``weights``: a weights file (e.g.
    ImageNet, as PSA) that replaces the classifier's weights; without a
    classifier and without weights the backbone is randomly initialised.
    """
    name: str | None = None
    options: dict = field(default_factory=dict)
    weights: str | None = None
    classifier: str | None = None


def initial_backbone(init: BackboneInit) -> tuple[Backbone, dict, str]:
    """The backbone ``init`` describes, its {"backbone": name,
    "backbone_options": options} for a final.pt's metadata, and a line
    saying how it was initialised."""
    name, options = init.name, dict(init.options)
    state = None
    if init.classifier is not None:
        state, meta = read_checkpoint(init.classifier, ("classifier",))
        if name is not None and name != meta["backbone"]:
            raise UsageError(f"--backbone {name} differs from the backbone of classifier {init.classifier} "
                             f"({meta['backbone']}); leave out --init to build {name} from --weights")
        if options and init.weights is None:
            raise UsageError("--backbone-option would change the classifier's backbone; it is taken "
                             f"as trained ({meta['backbone_options']})")
        name, options = meta["backbone"], {**meta["backbone_options"], **options}
    if name is None:
        raise UsageError("name a backbone (--backbone) or a classifier to start from (--init)")
    if state is not None and init.weights is None:
        backbone = build_backbone(name, None, **options)
        report = load_weights(backbone, state, what=f"{name} backbone",
                              key_map=lambda k: k[len("backbone."):] if k.startswith("backbone.") else None)
        how = f"backbone {name} from classifier {init.classifier}: {report.summary()}"
    else:
        backbone = build_backbone(name, init.weights, **options)
        how = f"backbone {name} from {init.weights or 'random initialisation'}"
    return backbone, {"backbone": name, "backbone_options": options}, how
