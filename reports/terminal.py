"""The terminal report: rich tables for one results object.

``render(results, console)`` prints every section whose data exists and leaves out the sections
of stages that did not run. It reads only the results object, so ``robusteval report`` can re-render a
saved file without recomputing anything.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..results import Results

_SPARK = "▁▂▃▄▅▆▇█"


def render(results: Results, console: Console) -> None:
    """Print the full terminal report of ``results`` to ``console``."""
    console.print(_summary_panel(results))
    console.print(_accuracy_table(results))
    console.print(_geometry_table(results))
    bracket = _bracket_table(results)
    if bracket is not None:
        console.print(bracket)
    if results.parameter_space:
        console.print(_parameter_space_table(results.parameter_space))
    if results.bounds:
        console.print(_bounds_table(results.bounds))
    if results.predictive:
        console.print(_predictive_table(results.predictive))
    console.print(_flags_panel(results))


def _summary_panel(results: Results) -> Panel:
    model, data, environment = results.model, results.data, results.environment
    lines = Table.grid(padding=(0, 2))
    lines.add_column(style="bold")
    lines.add_column()
    lines.add_row("model", Text(f"{model.name or model.path}  ({model.format}, {model.parameter_count:,} parameters"
                                f"{', piecewise linear' if model.piecewise_linear else ''})"))
    if model.architecture:
        lines.add_row("architecture", Text(model.architecture))
    lines.add_row("data", Text(f"{data.name}: {data.num_samples} samples of shape {tuple(data.input_shape)}, "
                               f"bounds [{data.input_bounds[0]:g}, {data.input_bounds[1]:g}], "
                               f"{data.num_classes} classes"))
    lines.add_row("clean accuracy", f"{results.clean_accuracy:.1%}")
    for threat_model in results.threat_models:
        if threat_model.robust_accuracy:
            lines.add_row(f"robust accuracy ({threat_model.norm})", Text(_curve_summary(threat_model)))
    seconds = results.timing.get("total_seconds")
    lines.add_row("environment", Text(f"torch {environment.torch}, foolbox {environment.foolbox}, "
                                      f"torchattacks {environment.torchattacks}, device {environment.device}, "
                                      f"seed {environment.seed}" + (f", {seconds:.1f} s" if seconds else "")))
    return Panel(lines, title="robusteval", title_align="left", border_style="cyan")


def _curve_summary(threat_model: Any, limit: int = 6) -> str:
    """Describe robust accuracy against epsilon up to the first epsilon where it reaches zero."""
    points = []
    for epsilon, accuracy in zip(threat_model.epsilons, threat_model.robust_accuracy):
        points.append(f"{accuracy:.1%} at {epsilon:g}")
        if accuracy == 0 or len(points) == limit:
            break
    return ", ".join(points)


def _accuracy_table(results: Results) -> Table:
    table = Table(title="Robust accuracy (per-sample worst case over all attacks)", title_justify="left")
    table.add_column("norm")
    table.add_column("epsilon", justify="right")
    table.add_column("robust acc.", justify="right", style="bold")
    table.add_column("success rate", justify="right")
    attack_names = sorted({name for tm in results.threat_models for name in tm.per_attack_robust_accuracy})
    for name in attack_names:
        table.add_column(name, justify="right", style="dim")

    for threat_model in results.threat_models:
        for position, epsilon in enumerate(threat_model.epsilons):
            success = threat_model.attack_success_rate
            row = [
                threat_model.norm if position == 0 else "",
                f"{epsilon:g}",
                _percent(threat_model.robust_accuracy[position]),
                _percent(success[position]) if position < len(success) else "-",
            ]
            for name in attack_names:
                values = threat_model.per_attack_robust_accuracy.get(name)
                row.append(_percent(values[position]) if values else "-")
            table.add_row(*row)
    skipped = {name: reason for tm in results.threat_models for name, reason in tm.skipped_attacks.items()}
    if skipped:
        table.caption = "skipped: " + "; ".join(f"{name} ({reason})" for name, reason in sorted(skipped.items()))
    return table


def _geometry_table(results: Results) -> Table:
    samples = results.samples
    method = results.geometry.get("method") or "?"
    table = Table(title=f"Geometry per sample (tangent sensitivity: {method})", title_justify="left")
    table.add_column("quantity", no_wrap=True)
    for header in ("min", "median", "max"):
        table.add_column(header, justify="right", no_wrap=True)
    table.add_column("distribution", no_wrap=True)

    rows: list[tuple[str, list[float]]] = [
        ("TS, predicted class", [s.tangent_sensitivity[s.prediction] for s in samples]),
        ("TS, mean of classes", [sum(s.tangent_sensitivity) / len(s.tangent_sensitivity) for s in samples]),
    ]
    for norm in ("l2", "linf"):
        rows += [
            (f"region dist. {norm}", [getattr(s.region_distance, norm) for s in samples]),
            (f"decision dist. {norm}", [getattr(s.linear_decision_distance, norm) for s in samples]),
            (f"certified {norm}", [getattr(s.certified_radius, norm) for s in samples]),
            (f"min. adv. dist. {norm}", [getattr(s.min_adversarial_distance, norm) for s in samples]),
        ]
    for label, values in rows:
        finite = sorted(v for v in values if v is not None and math.isfinite(v))
        if not finite:
            table.add_row(label, *["-"] * 3, Text("no values", style="dim"))
            continue
        table.add_row(label, *(_number(_quantile(finite, q)) for q in (0, 0.5, 1)), _sparkline(finite))

    exact = {norm: sum(bool(s.certificate_exact.get(norm)) for s in samples) for norm in ("l2", "linf")}
    certified = any(getattr(s.certified_radius, norm) is not None for s in samples for norm in ("l2", "linf"))
    caption = "TS = tangent sensitivity. Quantiles cover the samples with a value: min. adv. dist. only those an attack broke."
    if certified:
        caption += (f" Certified radius is exact (equals the true minimal adversarial distance) for l2 "
                    f"{exact['l2']}/{len(samples)}, linf {exact['linf']}/{len(samples)} samples.")
    else:
        caption += " No certified radii: see the flags below."
    regions = results.regions or {}
    if regions.get("available"):
        caption += (f" {regions['distinct_patterns']} distinct activation regions among {regions['samples']} samples"
                    f" (largest holds {regions['largest_region_samples']}).")
    table.caption = caption
    return table


def _bracket_table(results: Results) -> Table | None:
    bracket = results.geometry.get("bracket")
    if not isinstance(bracket, dict) or not bracket:
        return None
    table = Table(title="Certified radius <= robustness <= minimal adversarial distance", title_justify="left")
    table.add_column("norm")
    table.add_column("attack within 1%", justify="right")
    table.add_column("median gap", justify="right")
    table.add_column("violations", justify="right")
    for norm, values in sorted(bracket.items()):
        if not isinstance(values, dict):
            continue
        if values.get("certified") == 0:
            # No sample had a certified radius, so there was nothing to compare.
            table.add_row(norm, "-", "-", Text("no certified radii", style="dim"))
            continue
        gap = values.get("gap_quantiles") or {}
        median = gap.get("0.5", gap.get("median")) if isinstance(gap, dict) else None
        table.add_row(norm, _percent(values.get("exact_share")), _number(median), str(values.get("violations", "-")))
    # The geometry table's caption counts certificates that are exact by construction. This table
    # counts samples where an attack came within 1% of the radius, so the two can differ.
    table.caption = ("attack within 1%: samples whose minimal adversarial distance is within 1% of the certified "
                     "radius, so that their robustness is known from both sides.")
    return table


def _parameter_space_table(section: dict[str, Any]) -> Group:
    parts: list[Any] = []
    curves = Table(title="Parameter space: accuracy under weight perturbation", title_justify="left")
    curves.add_column("perturbation")
    curves.add_column("scales", overflow="fold")
    curves.add_column("accuracy", overflow="fold")
    curves.add_column("acc. -0.1 at", justify="right")
    curves.caption = ("acc. -0.1 at: the scale where accuracy falls 0.1 below clean accuracy (searched for noise, "
                      "interpolated on the grid for AWP).")
    for curve in section.get("weight_noise", []) or []:
        curves.add_row(f"Gaussian noise ({curve.get('mode')})", _numbers(curve.get("scales", [])),
                       _numbers(curve.get("accuracy", [])), _number(curve.get("sharpness_sigma")))
    adversarial = section.get("adversarial_weights")
    if isinstance(adversarial, dict):
        curves.add_row("adversarial weights (AWP)", _numbers(adversarial.get("scales", [])),
                       _numbers(adversarial.get("accuracy", [])),
                       _number(_scale_at_drop(adversarial.get("scales", []), adversarial.get("accuracy", []))))
    parts.append(curves)

    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    radii = section.get("sample_radii") or {}
    for key, value in radii.items():
        facts.add_row(f"per-sample {key.replace('_', ' ')}", Text(_describe_summary(value)))
    shift = section.get("tangent_shift") or {}
    if shift:
        facts.add_row("tangent shift", Text(
            f"within L2 eps={_number(shift.get('epsilon'))}: {_percent(shift.get('share_crossed'))} of searches crossed a "
            f"region boundary; inside the region, achieved / (TS * eps) is "
            f"{_describe_summary(shift.get('achieved_over_bound_inside_region'))} and the bound was violated "
            f"{shift.get('bound_violations_inside_region')} times"))
    for update in section.get("single_example_update") or []:
        text = (f"one step of size {_number(update.get('step_size'))} changes {update.get('changed_clean')} of "
                f"{update.get('num_eval')} predictions; perturbed within {update.get('norm')} "
                f"{_number(update.get('epsilon'))}: {update.get('changed_perturbed')}")
        if update.get("delta_l2") == 0:
            text += " (no perturbation changed more, so the search kept the unperturbed example)"
        facts.add_row(f"single-example update ({update.get('mode')})", Text(text))
    if facts.row_count:
        parts.append(facts)
    return Group(*parts)


def _scale_at_drop(scales: Sequence[float], accuracy: Sequence[float], drop: float = 0.1) -> float | None:
    """Return the scale where the measured curve first falls ``drop`` below its value at the first scale.

    Interpolated linearly between the two grid points around the crossing; ``None`` when the
    curve never falls that far.
    """
    if len(scales) < 2 or len(scales) != len(accuracy):
        return None
    target = accuracy[0] - drop
    for (left, right), (above, below) in zip(zip(scales, scales[1:]), zip(accuracy, accuracy[1:])):
        if below <= target < above:
            return left + (right - left) * (above - target) / (above - below)
    return None


def _bounds_table(bounds: dict[str, Any]) -> Table:
    table = Table(title="Bounds on tangent sensitivity", title_justify="left")
    table.add_column("bound")
    table.add_column("value", justify="right")
    table.add_column("held on all samples", justify="center")
    table.add_column("tightness (bound / max)", justify="right")
    reasons: set[str] = set()
    for name, entry in bounds.items():
        if not isinstance(entry, dict) or "value" not in entry:
            continue
        if entry.get("applies") is False:
            reason = str(entry.get("reason", "does not apply"))
            table.add_row(name.replace("_", " "), "-", "n/a", Text("same reason as above" if reason in reasons else reason, style="dim"))
            reasons.add(reason)
            continue
        held = entry.get("held_on_all_samples")
        mark = Text("yes", style="green") if held else Text("NO", style="bold red") if held is False else Text("-")
        table.add_row(name.replace("_", " "), _number(entry.get("value")), mark, _number(entry.get("tightness")))
    return table


_SHORT_NAMES = {
    "min_adversarial_distance": "min. adv. dist.",
    "linear_decision_distance": "decision dist.",
    "weight_noise_flip_probability": "noise flip prob.",
    "adversarial_weight_radius": "adv. weight radius",
    "mean_tangent_sensitivity": "TS, mean",
    "tangent_sensitivity": "TS, predicted",
    "tangent_shift_achieved": "tangent shift",
}


def _short_name(name: str) -> str:
    for long, short in _SHORT_NAMES.items():
        name = name.replace(long, short)
    return name.replace("_", " ")


def _predictive_table(predictive: Sequence[dict[str, Any]], limit: int = 15) -> Table:
    table = Table(title="Which scores predict what the attacks found (ranked by |Spearman|)", title_justify="left")
    table.add_column("score", no_wrap=True)
    table.add_column("target", no_wrap=True)
    table.add_column("Spearman [95% CI]", justify="right", no_wrap=True)
    table.add_column("Kendall", justify="right", no_wrap=True)
    table.add_column("n", justify="right")
    ranked = sorted(
        (entry for entry in predictive if entry.get("spearman") is not None),
        key=lambda entry: -abs(entry["spearman"]),
    )
    captions = []
    few = False
    for entry in ranked[:limit]:
        kendall = entry.get("kendall")
        count = entry.get("n")
        small = isinstance(count, int) and count < FEW_SAMPLES
        few = few or small
        count_text = "-" if count is None else str(count)
        if small:
            count_text += "*"
        table.add_row(_short_name(str(entry["score"])), _short_name(str(entry["target"])),
                      _with_interval(entry.get("spearman"), entry.get("spearman_ci")),
                      "-" if kendall is None else f"{kendall:+.2f}", count_text)
    if few:
        captions.append(f"* fewer than {FEW_SAMPLES} samples: the coefficient and its bootstrap interval are unreliable.")
    if len(ranked) > limit:
        captions.append(f"{len(ranked) - limit} more pairs, with Kendall intervals and AUROC, are in results.json.")
    if captions:
        table.caption = " ".join(captions)
    return table


# Samples below which a rank correlation and its bootstrap interval are marked as unreliable. With
# 5 samples in the same order in both columns, every resample is ordered too, and the report read
# +1.00 [+1.00, +1.00]. The threshold of 20 is a convention, not a derived bound.
FEW_SAMPLES = 20


def _flags_panel(results: Results) -> Panel:
    if not results.flags:
        return Panel(Text("No flags: nothing suggests the evaluation is unreliable.", style="green"),
                     title="Flags", title_align="left", border_style="green")
    styles = {"error": "bold red", "warning": "yellow", "info": "dim"}
    body = Table.grid(padding=(0, 1))
    body.add_column()
    body.add_column()
    for flag in results.flags:
        body.add_row(Text(f"[{flag.severity}] {flag.code}", style=styles.get(flag.severity, "")), Text(flag.message))
    worst = "red" if any(flag.severity == "error" for flag in results.flags) else "yellow"
    return Panel(body, title="Flags", title_align="left", border_style=worst)


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    position = q * (len(sorted_values) - 1)
    lower = math.floor(position)
    upper = min(lower + 1, len(sorted_values) - 1)
    return sorted_values[lower] + (sorted_values[upper] - sorted_values[lower]) * (position - lower)


def _sparkline(sorted_values: Sequence[float], bins: int = 12) -> Text:
    low, high = sorted_values[0], sorted_values[-1]
    if high <= low:
        return Text(_SPARK[-1], style="cyan")
    counts = [0] * bins
    for value in sorted_values:
        counts[min(int((value - low) / (high - low) * bins), bins - 1)] += 1
    peak = max(counts)
    return Text("".join(_SPARK[round(count / peak * (len(_SPARK) - 1))] for count in counts), style="cyan")


def _number(value: Any) -> str:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "-"
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:.4g}"
    return f"{value:.3e}"


def _numbers(values: Iterable[Any]) -> str:
    return " ".join(_number(value) for value in values)


def _percent(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1%}"


def _with_interval(value: Any, interval: Any) -> str:
    if value is None:
        return "-"
    if isinstance(interval, (list, tuple)) and len(interval) == 2 and None not in interval:
        return f"{value:+.2f} [{interval[0]:+.2f}, {interval[1]:+.2f}]"
    return f"{value:+.3f}"


def _describe_summary(value: Any) -> str:
    """Describe a summary dict (count, median, min, max) or a plain number in a few words."""
    if isinstance(value, dict) and "median" in value:
        return f"median {_number(value.get('median'))} (range {_number(value.get('min'))} to {_number(value.get('max'))})"
    return _describe(value)


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{key}={_describe(item)}" for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return _numbers(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return _number(value)

