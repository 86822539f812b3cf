"""AffinityNet (PSA; SPEC.md, "AffinityNet and random walk") on any
:class:`Backbone`, and its loss. A trained one is rebuilt from its final.pt
by :func:`wsss_fast.models.checkpoints.load_affinity_net`.

The head follows PSA's: the last three backbone stages are projected by 1x1
convolutions (no bias) to 64, 128 and 256 channels, each followed by
GroupNorm (PSA's VGG-16 head; 8, 16 and 32 groups) or nothing (PSA's
ResNet-38 head) and ELU; maps at a finer stride than the last stage are
resized (bilinear) to its grid; the 448 concatenated channels go through a
448 -> 448 1x1 convolution (no bias) and ELU. Initialisation as PSA:
Kaiming-normal projections, Xavier-uniform (gain 4) fusion.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from .backbone import Backbone, param_groups

PROJECTIONS = (64, 128, 256)
HEAD_NORMS = ("gn", "none")
# PSA's heads: GroupNorm on VGG-16, none on ResNet-38; GroupNorm for the rest.
HEAD_NORM_DEFAULTS = {"resnet38": "none"}
EPS = 1e-5  # PSA's guard inside the logarithms and the pair counts


def default_head_norm(backbone_name: str) -> str:
    """The head normalisation PSA uses with that backbone ("gn" if PSA has none)."""
    return HEAD_NORM_DEFAULTS.get(backbone_name, "gn")


class AffinityNet(nn.Module):
    """Pairwise affinities of an image's pixels on the backbone's grid.

    Args:
        backbone: any Backbone whose ``forward_stages`` gives three maps.
        radius: pair radius on that grid (PSA: 5, 34 forward pairs per pixel).
        head_norm: "gn" (GroupNorm after each projection, PSA's VGG-16 head)
            or "none" (PSA's ResNet-38 head).

    ``forward(x)`` maps normalised images (B, 3, H, W) to affinities
    (B, P, ceil(H / stride), ceil(W / stride)) in (0, 1], the layout of
    :func:`wsss_fast.ops.affinity` (0 where a pair leaves the grid).
    """

    def __init__(self, backbone: Backbone, *, radius: int = 5, head_norm: str = "gn"):
        super().__init__()
        if head_norm not in HEAD_NORMS:
            raise ValueError(f"AffinityNet: head_norm must be one of {HEAD_NORMS}, got {head_norm!r}")
        if len(backbone.stage_channels) != len(PROJECTIONS):
            raise ValueError(f"AffinityNet needs a backbone with {len(PROJECTIONS)} stages, "
                             f"got stage_channels {backbone.stage_channels}")
        self.backbone = backbone
        self.radius = radius
        self.head_norm = head_norm
        self.stride = backbone.stride
        self.proj = nn.ModuleList(nn.Conv2d(c, o, 1, bias=False)
                                  for c, o in zip(backbone.stage_channels, PROJECTIONS))
        self.norms = nn.ModuleList(nn.GroupNorm(o // 8, o) if head_norm == "gn" else nn.Identity()
                                   for o in PROJECTIONS)
        self.fuse = nn.Conv2d(sum(PROJECTIONS), sum(PROJECTIONS), 1, bias=False)
        for conv in self.proj:
            nn.init.kaiming_normal_(conv.weight)
        nn.init.xavier_uniform_(self.fuse.weight, gain=4)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 448, h, w) affinity features on the last stage's grid."""
        stages = self.backbone.forward_stages(x)
        size = stages[-1].shape[-2:]
        maps = []
        for stage, conv, norm in zip(stages, self.proj, self.norms):
            f = F.elu(norm(conv(stage)))
            if f.shape[-2:] != size:
                f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            maps.append(f)
        return F.elu(self.fuse(torch.cat(maps, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The affinity operator runs in float32 (also under CUDA autocast).
        return ops.affinity(self.features(x).float(), self.radius)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """The four learning-rate groups: the projection and fusion convolutions
        are new (PSA's ``from_scratch_layers``); the head's GroupNorm
        parameters take the pretrained rates, as in PSA."""
        return param_groups(self, new_prefixes=("proj.", "fuse."))


def affinity_loss(aff: torch.Tensor, bg_pos: torch.Tensor, fg_pos: torch.Tensor,
                  neg: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """PSA's loss: bg_loss / 4 + fg_loss / 4 + neg_loss / 2.

    Args:
        aff: (B, P, H, W) affinities in [0, 1].
        bg_pos, fg_pos, neg: (B, P, H, W) bool pair masks
            (:func:`wsss_fast.stages.affinity_labels.pair_labels`).

    Returns:
        (loss, metrics): bg_loss = sum over bg_pos of -log(aff + 1e-5), divided
        by (count + 1e-5); fg_loss likewise; neg_loss with -log(1 + 1e-5 - aff).
        ``metrics`` holds the three terms and the three pair counts.
    """
    terms, counts = {}, {}
    for name, mask, value in (("bg", bg_pos, aff), ("fg", fg_pos, aff), ("neg", neg, 1 - aff)):
        weight = mask.to(aff.dtype)
        count = weight.sum()
        terms[name] = -(weight * torch.log(value + EPS)).sum() / (count + EPS)
        counts[name] = count
    loss = terms["bg"] / 4 + terms["fg"] / 4 + terms["neg"] / 2
    metrics = {f"{k}_loss": v.item() for k, v in terms.items()}
    metrics.update({f"{k}_pairs": v.item() for k, v in counts.items()})
    return loss, metrics
