"""Preflight: check a model and its data on a small probe batch before any evaluation starts.

Fatal problems raise :class:`PreflightError`. Findings that leave the evaluation possible but
unreliable or surprising become :class:`~robusteval.results.Flag` records with
``stage="preflight"``. The model is left exactly as it was handed in: parameters, buffers,
training flags and ``requires_grad``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .data import Dataset
from .errors import PreflightError
from .results import Flag

__all__ = ["PreflightReport", "preflight"]

logger = logging.getLogger(__name__)

STAGE = "preflight"
# Relative and absolute tolerance for "the same output". Batched float32 matrix products may
# use different kernels for different batch sizes, which changes the last few bits.
_RTOL = 1e-4
_ATOL = 1e-5
# Rows of the probe batch compared one at a time against the batched output.
_SINGLE_ROWS = 4
# Layer types whose output differs between train and eval mode (dropout and batch norm families).
_TRAIN_MODE_LAYERS = re.compile(r"Dropout|BatchNorm")


@dataclass(frozen=True)
class PreflightReport:
    """Outcome of :func:`preflight`: the number of classes and the non-fatal findings."""

    num_classes: int
    flags: list[Flag] = field(default_factory=list)


@dataclass
class _ModelState:
    """Everything :func:`preflight` may touch, recorded so it can be put back exactly."""

    training: list[tuple[nn.Module, bool]]
    requires_grad: list[tuple[torch.Tensor, bool]]
    tensors: dict[str, torch.Tensor]


def preflight(
    model: nn.Module,
    data: Dataset,
    *,
    device: str | torch.device = "cpu",
    probe_size: int = 32,
    memory_budget: int = 2**31,
) -> PreflightReport:
    """Check that ``model`` can be evaluated on ``data``, using the first ``probe_size`` samples.

    The model runs in eval mode without gradients. The checks run in this order:

    1. Bytes of parameters and buffers against ``memory_budget``, and finite weights.
    2. A forward pass on the probe batch, returning a tensor of shape ``(N, C)`` with ``C >= 2``.
    3. Finite outputs, and labels below ``C``.
    4. Identical outputs for identical calls, and outputs independent of the batch size.
    5. Outputs that look like probabilities or log-probabilities.

    Args:
        model: The network, on ``device``.
        data: Validated data whose inputs the model takes.
        device: Device the probe batch is moved to.
        probe_size: Number of samples in the probe batch.
        memory_budget: Bytes the model's parameters and buffers may occupy.

    Returns:
        The number of classes ``C`` and the flags raised.

    Raises:
        PreflightError: The model cannot be evaluated on this data.
        ValueError: ``probe_size`` or ``memory_budget`` is not positive.
    """
    if probe_size < 1:
        raise ValueError(f"Expected probe_size >= 1, but got {probe_size}.")
    if memory_budget < 1:
        raise ValueError(f"Expected a positive memory_budget in bytes, but got {memory_budget}.")
    target = torch.device(device)
    flags: list[Flag] = []

    _check_memory(model, memory_budget)
    _check_finite_weights(model)
    state = _record_state(model)
    try:
        flags += _train_mode_flags(model)
        _set_eval(model)
        num_classes = _check_outputs(model, data, target, probe_size, flags)
    finally:
        changed = _restore_state(model, state)
    if changed:
        flags.append(Flag(
            code="stateful_forward",
            severity="warning",
            message=(
                f"The model changed its own parameters or buffers during forward passes ({', '.join(changed[:_SINGLE_ROWS])}). "
                "robusteval restored them, but results may depend on the order of evaluation. "
                "Make forward() free of side effects in eval mode."
            ),
            stage=STAGE,
            details={"changed": changed},
        ))
    for flag in flags:
        logger.info("preflight %s (%s): %s", flag.code, flag.severity, flag.message)
    return PreflightReport(num_classes=num_classes, flags=flags)


def _check_memory(model: nn.Module, budget: int) -> None:
    tensors = {id(tensor): tensor for tensor in [*model.parameters(), *model.buffers()]}
    size = sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())
    if size > budget:
        raise PreflightError(
            f"The model's parameters and buffers take {size / 2**20:.1f} MiB, more than the memory budget "
            f"of {budget / 2**20:.1f} MiB. Raise it with --memory-budget MIB (memory_budget=BYTES in Python), "
            "or evaluate a smaller model."
        )


def _check_finite_weights(model: nn.Module) -> None:
    bad = [
        name
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        raise PreflightError(
            f"Expected finite weights, but {len(bad)} parameter or buffer tensor(s) contain NaN or inf: "
            f"{', '.join(bad[:_SINGLE_ROWS])}. Training probably diverged; use an earlier checkpoint."
        )


def _train_mode_flags(model: nn.Module) -> list[Flag]:
    from .loading import modules_saved_in_train_mode

    saved = set(modules_saved_in_train_mode(model))
    handed_over = any(module.training for module in model.modules()) and not _eval_raises(model)
    if not handed_over and not saved:
        return []
    affected = [
        f"{name or '<root>'} ({_layer_type(module)})"
        for name, module in model.named_modules()
        if (module.training or name in saved) and _TRAIN_MODE_LAYERS.search(_layer_type(module))
    ]
    where = f" Modules that behave differently in train mode: {', '.join(affected[:_SINGLE_ROWS])}." if affected else ""
    origin = "was handed over" if handed_over else "was saved"
    return [Flag(
        code="train_mode",
        severity="warning",
        message=(
            f"The model {origin} in train mode. robusteval evaluates it in eval mode, as if "
            f"model.eval() had been called, and leaves the original object unchanged.{where} "
            "Call model.eval() before saving to silence this warning."
        ),
        stage=STAGE,
        details={"train_mode_modules": affected},
    )]


def _layer_type(module: nn.Module) -> str:
    # A TorchScript submodule is a RecursiveScriptModule; `original_name` keeps its eager class name.
    return str(getattr(module, "original_name", type(module).__name__))


def _eval_raises(model: nn.Module) -> bool:
    # Exported programs (torch.export) raise on eval() because their train/eval behaviour is
    # fixed in the graph, so their `training` attribute is meaningless.
    training = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
    except NotImplementedError:
        return True
    finally:
        for module, flag in training:
            module.training = flag
    return False


def _set_eval(model: nn.Module) -> None:
    try:
        model.eval()
    except NotImplementedError:
        logger.debug("%s does not support eval(); it runs as exported", type(model).__name__)


def _check_outputs(model: nn.Module, data: Dataset, device: torch.device, probe_size: int, flags: list[Flag]) -> int:
    probe = data.x[:probe_size].to(device)
    first = _forward(model, probe, data)
    num_classes = first.shape[1]

    if not bool(torch.isfinite(first).all()):
        rows = torch.nonzero(~torch.isfinite(first).all(dim=1)).flatten()[:_SINGLE_ROWS].tolist()
        raise PreflightError(
            f"Expected finite outputs, but the model returned NaN or inf on the probe batch (rows {rows}) "
            f"of {data.name!r}. Check the model for divisions, logarithms or overflow, and the data for outliers."
        )
    _check_labels(data, num_classes)

    second = _forward(model, probe, data)
    nondeterministic = not torch.allclose(first, second, rtol=_RTOL, atol=_ATOL)
    if nondeterministic:
        difference = float((first - second).abs().max())
        flags.append(Flag(
            code="nondeterministic_outputs",
            severity="error",
            message=(
                f"Two identical forward passes in eval mode returned different outputs (largest difference "
                f"{difference:.3g}). Randomness in forward() (noise injection, sampling, dropout called through "
                "torch.nn.functional with training=True) makes attacks and certificates unreliable. "
                "Make forward() deterministic in eval mode."
            ),
            stage=STAGE,
            details={"max_abs_difference": difference},
        ))
    elif len(probe) > 1:
        flags += _batch_size_flags(model, probe, first, data)

    flags += _probability_flags(first)
    return num_classes


def _forward(model: nn.Module, batch: torch.Tensor, data: Dataset) -> torch.Tensor:
    try:
        with torch.no_grad():
            output = model(batch)
    except Exception as error:  # noqa: BLE001 - any failure of user code on the probe batch is fatal
        raise PreflightError(_forward_failure_message(model, batch, data, error)) from error
    return _check_output_type(output, batch)


def _forward_failure_message(model: nn.Module, batch: torch.Tensor, data: Dataset, error: Exception) -> str:
    text = _error_summary(error)
    expected = _expected_input(model)
    expectation = f" The model's first layer expects {expected}." if expected else ""
    hint = ""
    if "Guard failed" in text:
        hint = " Exported programs accept only the input shapes they were exported with."
        if "size()[0]" in text:
            hint += (" Export again with a dynamic batch size, for example "
                     "torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim('batch')},)).")
    dtypes = {parameter.dtype for parameter in model.parameters()}
    if dtypes and torch.float32 not in dtypes:
        hint += f" The model's parameters are {', '.join(sorted(map(str, dtypes)))} but inputs are float32; call model.float()."
    return (
        f"The model failed on a probe batch of shape {tuple(batch.shape)} (float32) from {data.name!r}, whose "
        f"samples have shape {tuple(data.x.shape[1:])}: {type(error).__name__}: {text}.{expectation}{hint} "
        "Check that the model and the data belong together."
    )


def _error_summary(error: Exception) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    # The TorchScript interpreter puts two stack traces before the original error, which is the
    # last line ("RuntimeError: mat1 and mat2 shapes cannot be multiplied (16x32 and 64x16)").
    if lines[0].startswith("The following operation failed in the TorchScript interpreter"):
        prefix = f"{type(error).__name__}: "
        return lines[-1].removeprefix(prefix)
    return lines[0]


def _expected_input(model: nn.Module) -> str | None:
    for module in model.modules():
        layer = _layer_type(module)
        if isinstance(module, nn.Linear) or (layer == "Linear" and hasattr(module, "in_features")):
            return f"{module.in_features} input features (nn.Linear)"
        if isinstance(module, nn.modules.conv._ConvNd) or (layer.startswith("Conv") and hasattr(module, "in_channels")):
            return f"{module.in_channels} input channels ({layer})"
    return None


def _check_output_type(output: Any, batch: torch.Tensor) -> torch.Tensor:
    if not isinstance(output, torch.Tensor):
        raise PreflightError(
            f"Expected the model to return a logits tensor of shape ({len(batch)}, C), but it returned "
            f"{_describe(output)}. Wrap the model so that forward() returns only the logits, for example "
            f"`forward(self, x): return self.inner(x){_selector(output)}`."
        )
    if output.ndim != 2:
        hint = " For a binary classifier with one score z, return torch.stack([-z, z], dim=1)." if output.ndim == 1 else ""
        raise PreflightError(
            f"Expected logits of shape ({len(batch)}, C), but the model returned shape {tuple(output.shape)}.{hint}"
        )
    if output.shape[0] != len(batch):
        raise PreflightError(
            f"Expected one row of logits per input, but a batch of {len(batch)} inputs gave {output.shape[0]} rows. "
            "The model must not mix samples across the batch dimension."
        )
    if output.shape[1] < 2:
        raise PreflightError(
            f"Expected at least 2 classes, but the model returned shape {tuple(output.shape)}. "
            "For a binary classifier with one score z, return torch.stack([-z, z], dim=1)."
        )
    if not output.is_floating_point():
        raise PreflightError(f"Expected floating-point logits, but the model returned dtype {output.dtype}.")
    return output.detach().float()


def _describe(output: Any) -> str:
    if isinstance(output, Mapping):
        items = ", ".join(f"{key!r}: {_describe_item(value)}" for key, value in list(output.items())[:_SINGLE_ROWS])
        return f"a {type(output).__name__} {{{items}}}"
    if isinstance(output, Sequence) and not isinstance(output, str):
        items = ", ".join(_describe_item(value) for value in list(output)[:_SINGLE_ROWS])
        return f"a {type(output).__name__} of {len(output)} items ({items})"
    return f"an object of type {type(output).__name__}"


def _describe_item(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"Tensor{tuple(value.shape)}"
    return type(value).__name__


def _selector(output: Any) -> str:
    if isinstance(output, Mapping):
        for key in ("logits", *output):
            if isinstance(output.get(key), torch.Tensor):
                return f"[{key!r}]"
    return "[0]"


def _check_labels(data: Dataset, num_classes: int) -> None:
    for name, labels in (("y", data.y), ("y_train", data.y_train)):
        if labels is None or len(labels) == 0:
            continue
        largest = int(labels.max())
        if largest >= num_classes:
            count = int((labels >= num_classes).sum())
            raise PreflightError(
                f"Expected labels below the model's {num_classes} classes, but {count} label(s) in {name} of "
                f"{data.name!r} reach {largest}. Check that the model and the data belong together, or remap the labels."
            )


def _batch_size_flags(model: nn.Module, probe: torch.Tensor, batched: torch.Tensor, data: Dataset) -> list[Flag]:
    rows = range(min(_SINGLE_ROWS, len(probe)))
    try:
        singles = torch.cat([_forward(model, probe[row:row + 1], data) for row in rows])
    except PreflightError as error:
        # The batch passed, so a failure on one sample is itself a dependence on the batch, for
        # example BatchNorm with batch statistics, which needs more than one value per channel.
        cause = _error_summary(error.__cause__) if isinstance(error.__cause__, Exception) else str(error)
        found = f"it accepts the probe batch of {len(probe)} samples but fails on a single sample ({cause})"
        details: dict[str, Any] = {"single_sample_error": cause}
    else:
        reference = batched[: len(singles)]
        if torch.allclose(singles, reference, rtol=_RTOL, atol=_ATOL):
            return []
        difference = float((singles - reference).abs().max())
        found = (
            f"evaluated alone, the first {len(singles)} samples differ from the batched outputs by up to {difference:.3g}"
        )
        details = {"max_abs_difference": difference, "rows_compared": len(singles)}
    return [Flag(
        code="batch_size_dependent",
        severity="error",
        message=(
            f"The model's outputs for a sample depend on the rest of the batch: {found}. Layers that "
            "normalize over the batch (batch statistics, or BatchNorm forced into train mode) cause this; "
            "attacks evaluate samples in batches of varying size, so their results would not be comparable. "
            "Normalize with statistics stored in the model (BatchNorm with track_running_stats=True, in eval "
            "mode) or per sample, so that each output depends on its own input only."
        ),
        stage=STAGE,
        details=details,
    )]


def _probability_flags(logits: torch.Tensor) -> list[Flag]:
    row_sums = logits.sum(dim=1)
    exp_sums = logits.double().exp().sum(dim=1)
    is_probability = bool((logits >= 0).all()) and torch.allclose(row_sums, torch.ones_like(row_sums), atol=1e-4)
    is_log_probability = bool((logits <= 0).all()) and torch.allclose(exp_sums, torch.ones_like(exp_sums), atol=1e-4)
    if is_probability:
        kind = "probabilities (non-negative rows summing to 1)"
        effect = (
            "Saturated softmax outputs have vanishing gradients, so gradient attacks fail and robustness is "
            "overestimated (gradient masking); tangent sensitivity then describes the softmax, not the network."
        )
    elif is_log_probability:
        kind = "log-probabilities (rows whose exponentials sum to 1)"
        effect = (
            "Differences between classes, and so decisions and decision distances, are unchanged, but tangent "
            "sensitivity includes the log-sum-exp term."
        )
    else:
        return []
    return [Flag(
        code="probability_outputs",
        severity="warning",
        message=(
            f"The model's outputs look like {kind}, not logits. {effect} Remove the final softmax or "
            "log_softmax so that forward() returns logits."
        ),
        stage=STAGE,
        details={"kind": "probabilities" if is_probability else "log_probabilities"},
    )]


def _record_state(model: nn.Module) -> _ModelState:
    return _ModelState(
        training=[(module, module.training) for module in model.modules()],
        requires_grad=[(parameter, parameter.requires_grad) for parameter in model.parameters()],
        tensors={name: tensor.detach().clone() for name, tensor in model.state_dict(keep_vars=True).items()
                 if isinstance(tensor, torch.Tensor)},
    )


def _restore_state(model: nn.Module, state: _ModelState) -> list[str]:
    """Put training flags, ``requires_grad`` and tensor values back; return the names that changed."""
    for module, flag in state.training:
        module.training = flag
    for parameter, flag in state.requires_grad:
        parameter.requires_grad_(flag)
    changed = []
    current = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for name, saved in state.tensors.items():
            tensor = current.get(name)
            if not isinstance(tensor, torch.Tensor) or tensor.shape != saved.shape:
                continue
            if not torch.equal(tensor.detach(), saved):
                changed.append(name)
                tensor.detach().copy_(saved)
    return changed

