"""Helpers shared by the parameter-space attacks: parameter sets, input checks and forward passes.

Every attack evaluates the network through ``torch.func.functional_call`` with a dictionary of
(perturbed) parameter tensors, so the model's own parameters are never written. Buffers are not
passed, so BatchNorm running statistics come from the model and stay as they are. A tied
parameter appears once in the dictionary (under its first name) and ``functional_call`` uses it
for every name it is registered under, so it is perturbed once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

Parameters = dict[str, Tensor]

# Upper limit on the number of tensor elements held by one batch of per-sample parameter copies
# (2**24 float32 elements is 64 MiB).
PER_SAMPLE_ELEMENT_BUDGET = 2**24


def parameter_tensors(model: nn.Module) -> Parameters:
    """Return the model's parameters by name, detached; a tied parameter appears once."""
    parameters = {name: parameter.detach() for name, parameter in model.named_parameters()}
    if not parameters:
        raise ValueError(
            f"Expected a model with at least one parameter, but {type(model).__name__} has none. "
            "Parameter-space attacks need trainable weights."
        )
    return parameters


def parameter_count(parameters: Parameters) -> int:
    """Return the number of parameter elements."""
    return sum(tensor.numel() for tensor in parameters.values())


def tensor_norms(parameters: Parameters) -> Parameters:
    """Return the Frobenius norm of every parameter tensor, as 0-dimensional tensors."""
    return {name: tensor.norm() for name, tensor in parameters.items()}


def logits(model: nn.Module, parameters: Parameters, x: Tensor, batch_size: int) -> Tensor:
    """Return the model's outputs ``(N, K)`` with ``parameters`` in place of its own, in batches."""
    outputs = []
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            batch = x[start : start + batch_size]
            outputs.append(check_logits(functional_call(model, parameters, (batch,)), batch.shape[0]))
    return torch.cat(outputs)


def predictions(model: nn.Module, parameters: Parameters, x: Tensor, batch_size: int) -> Tensor:
    """Return the predicted classes ``(N,)`` with ``parameters`` in place of the model's own."""
    return logits(model, parameters, x, batch_size).argmax(dim=1)


def per_sample_logits(model: nn.Module, parameters: Parameters, x: Tensor) -> Tensor:
    """Evaluate sample ``n`` of ``x`` with parameter set ``n``.

    Args:
        model: The network.
        parameters: Per-sample parameter sets, each tensor of shape ``(N, *parameter_shape)``.
        x: Inputs ``(N, ...)``.

    Returns:
        Outputs ``(N, K)``.
    """

    def single(sample_parameters: Parameters, sample: Tensor) -> Tensor:
        return functional_call(model, sample_parameters, (sample.unsqueeze(0),)).squeeze(0)

    return torch.vmap(single)(parameters, x)


def samples_per_chunk(parameters: Parameters, copies_per_sample: int = 1) -> int:
    """Return how many samples fit in one batch of per-sample parameter copies."""
    elements = parameter_count(parameters) * copies_per_sample
    return max(1, PER_SAMPLE_ELEMENT_BUDGET // max(1, elements))


def check_logits(output: object, batch: int) -> Tensor:
    """Return ``output`` when it is a float tensor ``(batch, K)`` with ``K >= 2``, else raise."""
    if not isinstance(output, Tensor):
        raise TypeError(
            f"Expected the model to return a logits tensor of shape (N, K), but got {type(output).__name__}. "
            "Wrap the model so that it returns the logits tensor only."
        )
    if output.ndim != 2 or output.shape[0] != batch or output.shape[1] < 2:
        raise ValueError(
            f"Expected the model to return logits of shape ({batch}, K) with K >= 2, but got shape "
            f"{tuple(output.shape)}. Return one row of class scores per input."
        )
    return output


def check_inputs(x: Tensor, y: Tensor | None = None) -> None:
    """Raise when ``x`` is not a non-empty float batch or ``y`` is not matching int64 labels."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        kind = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"Expected inputs x as a float tensor (N, ...), but got {kind}. Convert with x.float().")
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(
            f"Expected inputs x of shape (N, ...) with N >= 1, but got shape {tuple(x.shape)}. "
            "Add a batch dimension with x.unsqueeze(0)."
        )
    if not torch.isfinite(x).all():
        raise ValueError("Expected finite inputs x, but x contains NaN or inf. Remove or repair those samples.")
    if y is None:
        return
    if not isinstance(y, Tensor) or y.dtype != torch.int64 or y.shape != (x.shape[0],):
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        dtype = y.dtype if isinstance(y, Tensor) else None
        raise ValueError(
            f"Expected labels y as an int64 tensor of shape ({x.shape[0]},), but got {shape} with dtype {dtype}. "
            "Pass one class index per input, for example y.long()."
        )


def check_positive(name: str, value: float) -> None:
    """Raise when ``value`` is not a finite number greater than zero."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0 or value == float("inf"):
        raise ValueError(f"Expected {name} to be a finite number > 0, but got {value!r}.")


def check_count(name: str, value: int) -> None:
    """Raise when ``value`` is not an integer of at least 1."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"Expected {name} to be an integer >= 1, but got {value!r}.")


def check_scales(name: str, scales: Sequence[float]) -> tuple[float, ...]:
    """Return ``scales`` as a tuple of floats after checking they are finite and non-negative."""
    values = tuple(float(scale) for scale in scales)
    if not values or any(not (0.0 <= value < float("inf")) for value in values):
        raise ValueError(
            f"Expected {name} to be a non-empty sequence of finite numbers >= 0, but got {list(scales)!r}."
        )
    return values
