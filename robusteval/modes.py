"""Switching a model to eval mode, including ``torch.export`` programs that reject ``eval()``."""

from __future__ import annotations

from torch import nn


def set_eval_mode(model: nn.Module) -> None:
    """Clear the training flag of ``model`` and every submodule.

    The flags are set directly instead of through ``eval()``, because the modules of
    ``torch.export`` programs raise ``NotImplementedError`` on ``eval()``. Their train or eval
    behaviour was fixed when they were exported, so the flag changes nothing for them.
    """
    for module in model.modules():
        module.training = False
