"""Generalization estimators: do the tangent-sensitivity measures track the test loss?

Daroczy (arXiv 2006.06780) claims that tangent sensitivity and the active-count bounds track
the generalization gap. This module measures each quantity on the training and the test split,
and turns the ratio test/train into an estimate of the test loss (training loss times the
ratio). Two baselines sit beside them: the trivial estimate test loss = training loss, and the
same ratio estimate built from the Frobenius norm of the input Jacobian d f / d x.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as functional
from torch import Tensor, nn

from robusteval.modes import set_eval_mode

from .active_count_moments import fit_gaussian_count_model
from .relu_chain import ReluChain, evaluate_chain, extract_relu_chain
from .tangent_bounds import active_count_bound, total_count_constant, total_count_exponent

logger = logging.getLogger(__name__)


def _input_jacobian_norms(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    """Return ``(N,)`` Frobenius norms of d f / d x, one backward pass per output."""
    norms = []
    for start in range(0, x.shape[0], batch_size):
        batch = x[start : start + batch_size].detach().clone().requires_grad_(True)
        logits = model(batch)
        squared = torch.zeros(batch.shape[0], dtype=torch.float64, device=batch.device)
        for output in range(logits.shape[1]):
            (gradient,) = torch.autograd.grad(logits[:, output].sum(), batch, retain_graph=True)
            squared += gradient.flatten(1).to(torch.float64).square().sum(dim=1)
        norms.append(squared.sqrt())
    return torch.cat(norms)


def _split_measures(model: nn.Module, chain: ReluChain | None, x: Tensor, y: Tensor, batch_size: int) -> dict[str, Any]:
    with torch.no_grad():
        logits = torch.cat([model(x[start : start + batch_size]) for start in range(0, x.shape[0], batch_size)])
    loss = float(functional.cross_entropy(logits.to(torch.float64), y))
    predicted = logits.argmax(dim=1)
    measures: dict[str, float] = {
        "input_jacobian_norm": float(_input_jacobian_norms(model, x, batch_size).mean()),
    }
    if chain is not None:
        forwards = [evaluate_chain(chain, x[start : start + batch_size]) for start in range(0, x.shape[0], batch_size)]
        tangent = torch.cat([forward.tangent_sensitivity for forward in forwards])  # (N, K)
        active = torch.cat([forward.active_units for forward in forwards]).cpu().numpy()  # (N, L-1)
        measures["tangent_sensitivity"] = float(tangent.gather(1, predicted.unsqueeze(1)).mean())
        measures["mean_tangent_sensitivity"] = float(tangent.mean())
        if chain.depth >= 2:
            totals = active.sum(axis=1)
            fit = fit_gaussian_count_model(totals)
            exponent = total_count_exponent(chain.depth)
            measures["active_count_bound"] = float(active_count_bound(chain, active).mean())
            measures["total_active_count"] = float(totals.mean())
            measures["total_active_count_bound"] = total_count_constant(chain) * fit.absolute_moment(exponent)
    return {
        "loss": loss,
        "accuracy": float((predicted == y).to(torch.float64).mean()),
        "samples": int(x.shape[0]),
        "measures": measures,
    }


def generalization_estimates(
    model: nn.Module,
    *,
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Measure each score on both splits and estimate the test loss from the training loss.

    Args:
        model: Network in eval mode returning logits ``(N, K)``.
        x_train: ``(N_train, ...)`` training inputs.
        y_train: ``(N_train,)`` int64 training labels.
        x_test: ``(N_test, ...)`` test inputs.
        y_test: ``(N_test,)`` int64 test labels.
        batch_size: Rows per forward pass.

    Returns:
        A JSON-ready dict with ``train`` and ``test`` (loss, accuracy, measures), the observed
        ``gap`` (test minus train cross-entropy loss, and train minus test accuracy), and
        ``estimates``: for each measure the ratio test/train, the estimated test loss
        ``train_loss * ratio`` and its error against the observed test loss. The measures
        ``tangent_sensitivity`` (at the predicted class), ``mean_tangent_sensitivity``,
        ``active_count_bound``, ``total_active_count`` and ``total_active_count_bound`` apply to
        fully connected ReLU chains only. The baselines ``input_jacobian_norm`` and ``trivial``
        (ratio 1) apply to every model.
    """
    for name, labels, inputs in (("y_train", y_train, x_train), ("y_test", y_test, x_test)):
        if labels.ndim != 1 or labels.shape[0] != inputs.shape[0] or labels.shape[0] == 0:
            raise ValueError(
                f"Expected {name} of shape (N,) matching its {inputs.shape[0]} inputs, but got shape "
                f"{tuple(labels.shape)}. Pass one integer label per input row."
            )
    if batch_size < 1:
        raise ValueError(f"Expected a positive batch size, but got {batch_size}.")

    chain, reason = extract_relu_chain(model)
    # Measured in eval mode, so that BatchNorm statistics are read, not updated; the caller's
    # training flags are put back afterwards.
    training = [(module, module.training) for module in model.modules()]
    set_eval_mode(model)
    try:
        train = _split_measures(model, chain, x_train, y_train, batch_size)
        test = _split_measures(model, chain, x_test, y_test, batch_size)
    finally:
        for module, flag in training:
            module.training = flag

    estimates: dict[str, dict[str, float | None]] = {
        "trivial": {"ratio": 1.0, "estimated_test_loss": train["loss"], "error": train["loss"] - test["loss"]}
    }
    for name, train_value in train["measures"].items():
        test_value = test["measures"][name]
        ratio = test_value / train_value if train_value > 0 else None
        estimate = None if ratio is None else train["loss"] * ratio
        estimates[name] = {
            "ratio": ratio,
            "estimated_test_loss": estimate,
            "error": None if estimate is None else estimate - test["loss"],
        }

    return {
        "train": train,
        "test": test,
        "gap": {"loss": test["loss"] - train["loss"], "accuracy": train["accuracy"] - test["accuracy"]},
        "estimates": estimates,
        "chain_measures_apply": chain is not None,
        "reason": reason,
    }
