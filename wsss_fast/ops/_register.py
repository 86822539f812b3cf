"""Registration shared by the operators' Python modules."""
from __future__ import annotations

from typing import Callable

import torch


def register_inference_only(name: str, fake: Callable, message: str) -> None:
    """Registers ``fake`` as the fake (shape) kernel of ``wsss_fast::<name>``,
    and an autograd formula whose backward raises RuntimeError(message): the
    operator runs under autograd but refuses to be differentiated."""
    torch.library.register_fake(f"wsss_fast::{name}")(fake)

    def backward(ctx, grad_out):
        raise RuntimeError(message)

    torch.library.register_autograd(f"wsss_fast::{name}", backward,
                                    setup_context=lambda ctx, inputs, output: None)
