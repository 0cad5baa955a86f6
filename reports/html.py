"""Self-contained HTML reports of one evaluation, or of several models compared.

The page carries its CSS inline and its charts as inline SVG drawn by :mod:`.charts`, so it opens
offline and fetches nothing. The jinja2 templates beside this module are rendered with
autoescaping on, so every string that comes from a file name, a model or the data shows as text.
Sections whose data is absent say so instead of failing.
"""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from robusteval._types import NORMS
from robusteval.compare import (
    Comparison,
    mean_tangent_sensitivity,
    median_min_adversarial_distance,
    min_adversarial_distances,
    model_label,
)
from robusteval.results import Flag, Results

from .charts import Series, histogram_chart, line_chart, scatter_chart

TEMPLATES = Path(__file__).parent / "templates"

# Plain explanations of the flag codes that robusteval's stages raise.
FLAG_EXPLANATIONS = {
    "train_mode": (
        "The model was handed over in training mode. Dropout and batch normalization behave "
        "differently there, so robusteval evaluated it in eval mode; call model.eval() before saving "
        "or evaluating it yourself to get the same numbers."
    ),
    "probability_outputs": (
        "The outputs look like probabilities or log-probabilities instead of logits. A softmax "
        "at the end flattens gradients, which can make attacks fail and robustness look better "
        "than it is. Remove the final softmax so that the model returns logits."
    ),
    "nondeterministic_outputs": (
        "The same input gave different outputs on repeated calls (random layers active at test "
        "time). Attacks that follow a random gradient can fail for that reason alone, so the "
        "robust accuracy is not trustworthy."
    ),
    "batch_size_dependent": (
        "Outputs changed with the batch size, for example through batch statistics used at test "
        "time. Attacks run at a different batch size than evaluation, so their results may not "
        "transfer."
    ),
    "zero_gradients": (
        "Input gradients were zero or not finite on some samples. Gradient-based attacks cannot "
        "move from there, which is a typical sign of gradient masking: robust accuracy is likely "
        "overestimated."
    ),
    "black_box_beats_white_box": (
        "A black-box attack, which does not use gradients, found adversarial examples that the "
        "gradient-based attacks missed. This usually means the gradients are misleading "
        "(gradient masking), so the white-box numbers overestimate robustness."
    ),
    "robust_accuracy_not_zero": (
        "Robust accuracy did not reach zero at the largest epsilon, although a large enough "
        "perturbation must fool any classifier. Either the grid stops too early or the attacks "
        "are not working on this model."
    ),
    "backend_disagreement": (
        "Two implementations of the same attack (foolbox and torchattacks PGD) disagreed by more "
        "than the stated tolerance on the same samples, so at least one of them is not reaching "
        "its optimum."
    ),
    "adversarial_recheck_failed": (
        "An adversarial example reported by an attack did not hold up when robusteval re-checked "
        "it (prediction, norm or input bounds). It was not counted."
    ),
    "region_walk_unavailable": (
        "Counting the activation regions crossed along the attack path was not possible for this "
        "model, so that column is empty."
    ),
}

# Chart titles longer than this overflow the 520-pixel SVG width at the 12-pixel bold title font.
MAX_CHART_TITLE = 64

SCATTER_SCORES = (
    ("tangent sensitivity (predicted class)", "tangent_sensitivity"),
    ("region distance", "region_distance"),
    ("linear decision distance", "linear_decision_distance"),
    ("certified radius", "certified_radius"),
    ("logit margin", "logit_margin"),
    ("input gradient norm", "input_gradient_norm"),
    ("weight-noise radius", "weight_noise_radius"),
    ("adversarial weight radius", "adversarial_weight_radius"),
)


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["number"] = format_number
    environment.filters["percent"] = format_percent
    return environment


def format_number(value: Any, digits: int = 4) -> str:
    """Return ``value`` rounded to ``digits`` significant digits; ``-`` for ``None``, ``inf`` as text."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if isinstance(value, float) and math.isnan(value):
            return "nan"
        return f"{value:.{digits}g}"
    return str(value)


def format_percent(value: float | None) -> str:
    """Return a fraction as a percentage with one decimal; ``-`` for ``None``."""
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "-"
    return f"{100.0 * value:.1f}%"


# Sections of the single-model report.


def _score(sample: Any, attribute: str, norm: str) -> float | None:
    value = getattr(sample, attribute, None)
    if attribute == "tangent_sensitivity":
        if not value or not 0 <= sample.prediction < len(value):
            return None
        return value[sample.prediction]
    if value is not None and hasattr(value, norm):
        return getattr(value, norm)
    return value if isinstance(value, (int, float)) else None


def _summary_cards(results: Results) -> list[dict[str, str]]:
    cards = [
        {"label": "clean accuracy", "value": format_percent(results.clean_accuracy)},
        {"label": "samples", "value": str(len(results.samples))},
    ]
    for threat_model in results.threat_models:
        if threat_model.epsilons and threat_model.robust_accuracy:
            # The smallest epsilon of the grid: the largest is a check that accuracy reaches zero.
            cards.append({
                "label": f"robust accuracy, {threat_model.norm} epsilon {threat_model.epsilons[0]:g}",
                "value": format_percent(threat_model.robust_accuracy[0]),
            })
        cards.append({
            "label": f"median minimal adversarial distance ({threat_model.norm})",
            "value": format_number(median_min_adversarial_distance(results, threat_model.norm)),  # type: ignore[arg-type]
        })
    cards.append({"label": "mean tangent sensitivity of the predicted class", "value": format_number(mean_tangent_sensitivity(results))})
    errors = sum(flag.severity == "error" for flag in results.flags)
    warnings_count = sum(flag.severity == "warning" for flag in results.flags)
    cards.append({"label": "flags (error / warning)", "value": f"{errors} / {warnings_count}"})
    return cards


def _robust_accuracy_section(results: Results) -> list[dict[str, Any]]:
    sections = []
    for threat_model in results.threat_models:
        series = [Series("worst case over all attacks", threat_model.epsilons, threat_model.robust_accuracy)]
        for attack, values in threat_model.per_attack_robust_accuracy.items():
            series.append(Series(attack, threat_model.epsilons, values))
        chart = line_chart(
            series, title=f"Robust accuracy against epsilon ({threat_model.norm})",
            x_label=f"epsilon ({threat_model.norm}, input units)", y_label="robust accuracy", y_range=(0.0, 1.0),
        )
        rows = []
        for position, epsilon in enumerate(threat_model.epsilons):
            rows.append({
                "epsilon": epsilon,
                "robust_accuracy": _at(threat_model.robust_accuracy, position),
                "attack_success_rate": _at(threat_model.attack_success_rate, position),
                "per_attack": [_at(values, position) for values in threat_model.per_attack_robust_accuracy.values()],
            })
        sections.append({
            "norm": threat_model.norm,
            "chart": chart,
            "attacks": list(threat_model.per_attack_robust_accuracy),
            "rows": rows,
            "skipped": threat_model.skipped_attacks,
        })
    return sections


def _at(values: Sequence[Any], position: int) -> Any:
    return values[position] if position < len(values) else None


def chart_title(title: str, limit: int = MAX_CHART_TITLE) -> str:
    """Return ``title``, cut at a word boundary and ended with an ellipsis if it exceeds ``limit`` characters."""
    if len(title) <= limit:
        return title
    cut = title[: limit - 1].rsplit(" ", 1)[0]
    return cut + "…"


def _scatter_section(results: Results) -> list[Markup]:
    charts = []
    norms = [tm.norm for tm in results.threat_models]
    for norm in norms:
        distances = min_adversarial_distances(results, norm)  # type: ignore[arg-type]
        for title, attribute in SCATTER_SCORES:
            scores = [_score(sample, attribute, norm) for sample in results.samples]
            if not any(value is not None for value in scores):
                continue
            norm_suffix = f" ({norm})" if attribute.endswith("distance") or attribute == "certified_radius" else ""
            charts.append(scatter_chart(
                [Series("", scores, list(distances))],
                title=chart_title(f"{title.removesuffix(' (predicted class)')}{norm_suffix} vs. min. adv. distance ({norm})"),
                x_label=f"{title}{norm_suffix}", y_label=f"minimal adversarial distance ({norm})",
            ))
    return charts


def _distribution_section(results: Results) -> list[Markup]:
    charts = []
    for attribute, title in (("region_distance", "region distance"), ("certified_radius", "certified radius")):
        for norm in NORMS:
            values = [getattr(getattr(sample, attribute), norm) for sample in results.samples]
            if any(value is not None for value in values):
                charts.append(histogram_chart([(f"{title} ({norm})", values)], title=f"Distribution of {title} ({norm})", x_label=f"{title} ({norm}, input units)"))
    return charts


def _is_curve(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and isinstance(value.get("scales"), list)
        and isinstance(value.get("accuracy"), list)
    )


def _flatten_scalars(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Return (dotted key, value) pairs of the scalars in a nested JSON value; long lists are summarized."""
    if isinstance(value, Mapping):
        pairs: list[tuple[str, Any]] = []
        for key, item in value.items():
            pairs += _flatten_scalars(item, f"{prefix}.{key}" if prefix else str(key))
        return pairs
    if isinstance(value, list):
        if all(isinstance(item, (int, float, str, bool)) or item is None for item in value):
            shown = ", ".join(format_number(item) for item in value[:8])
            return [(prefix, f"[{shown}{', ...' if len(value) > 8 else ''}] ({len(value)} values)")]
        pairs = []
        for position, item in enumerate(value):
            pairs += _flatten_scalars(item, f"{prefix}[{position}]")
        return pairs
    return [(prefix, value)]


# Readable names of the parameter-space keys that robusteval.attacks.parameter.section writes.
PARAMETER_SPACE_NAMES = {
    "weight_noise": "weight noise",
    "adversarial_weights": "adversarial weights",
    "sample_radii": "per-sample radii",
    "tangent_shift": "tangent shift",
    "single_example_update": "single-example update",
    "adversarial_weight": "adversarial weight radius",
    "adversarial_weight_first_order": "adversarial weight radius, first-order estimate",
    "first_order_spearman": "Spearman correlation of the radius and its first-order estimate",
    "weight_noise_vs_adversarial_spearman": "Spearman correlation of the weight-noise and adversarial radii",
    "share_crossed": "share of samples that crossed their activation region",
    "bound_violations_inside_region": "bound violations inside the region",
    "samples_inside_region": "samples inside the region",
    "achieved": "achieved change",
    "bound": "bound on the change",
    "achieved_over_bound_inside_region": "achieved change over bound, inside the region",
    "accuracy_std": "standard deviation of the accuracy",
    "sharpness_sigma": "noise sharpness sigma",
    "num_eval": "evaluated samples",
    "delta_l2": "input perturbation (L2; 0 when no perturbation changed more predictions)",
}

_SUMMARY_KEYS = frozenset({"count", "finite", "min", "q25", "median", "q75", "max", "mean"})


def _readable(key: str) -> str:
    return PARAMETER_SPACE_NAMES.get(key, key.replace("_", " "))


def _is_summary(value: Any) -> bool:
    """Return whether ``value`` is a distribution summary (count, quartiles, range) of a quantity."""
    return isinstance(value, Mapping) and {"median", "min", "max"} <= set(value) and set(value) <= _SUMMARY_KEYS


def _parameter_table(name: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    """Split one parameter-space entry into distribution summaries and readable key-value rows."""
    summaries: list[dict[str, Any]] = []
    scalars: dict[str, Any] = {}
    for key, value in entry.items():
        if _is_summary(value):
            summaries.append({"quantity": _readable(key)} | {field: value.get(field) for field in _SUMMARY_KEYS})
        else:
            scalars[key] = value
    rows = [(" ".join(_readable(part) for part in dotted.split(".")), value)
            for dotted, value in _flatten_scalars(scalars)]
    return {"name": name, "summaries": summaries, "rows": rows}


def _parameter_space_section(parameter_space: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not parameter_space:
        return None
    curves: list[Series] = []
    tables: list[dict[str, Any]] = []
    for name, value in parameter_space.items():
        entries = value if isinstance(value, list) else [value]
        for entry in entries:
            label = _readable(str(name))
            if isinstance(entry, Mapping) and entry.get("mode"):
                label = f"{label} ({entry['mode']})"
            if _is_curve(entry):
                curves.append(Series(label, entry["scales"], entry["accuracy"]))
                extra = {key: item for key, item in entry.items() if key not in ("scales", "accuracy", "mode")}
                if extra:
                    tables.append(_parameter_table(label, extra))
            elif isinstance(entry, Mapping):
                tables.append(_parameter_table(label, entry))
            elif entry is not None:
                tables.append({"name": label, "summaries": [], "rows": [(label, entry)]})
    chart = None
    if curves:
        chart = line_chart(
            curves, title="Accuracy under parameter-space perturbations",
            x_label="relative perturbation scale", y_label="accuracy", y_range=(0.0, 1.0),
        )
    return {"chart": chart, "tables": tables}


def _bounds_section(bounds: Mapping[str, Any] | None) -> list[dict[str, Any]] | None:
    if not bounds:
        return None
    rows = []
    for name, entry in bounds.items():
        if isinstance(entry, Mapping):
            known = ("value", "held_on_all_samples", "tightness", "applies", "assumptions")
            assumptions = entry.get("assumptions")
            if isinstance(assumptions, list):
                assumptions = "; ".join(str(item) for item in assumptions)
            other = [(key, item) for key, item in _flatten_scalars({k: v for k, v in entry.items() if k not in known})]
            rows.append({
                "name": name, "value": entry.get("value"), "held": entry.get("held_on_all_samples"),
                "tightness": entry.get("tightness"), "applies": entry.get("applies"),
                "assumptions": assumptions, "other": other,
            })
        else:
            rows.append({"name": name, "value": entry, "held": None, "tightness": None, "applies": None,
                         "assumptions": None, "other": []})
    return rows


def _interval(value: Any) -> str:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"[{format_number(value[0], 3)}, {format_number(value[1], 3)}]"
    return format_number(value)


def _auroc_text(value: Any) -> str:
    """Format an AUROC, or the per-epsilon AUROC list of a distance target as ``epsilon: value`` pairs."""
    if isinstance(value, (list, tuple)):
        pairs = [
            f"{format_number(item.get('epsilon'))}: {format_number(item.get('auroc'), 3)}"
            for item in value
            if isinstance(item, Mapping)
        ]
        return ", ".join(pairs) if pairs else format_number(None)
    return format_number(value, 3)


def _predictive_section(predictive: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    from robusteval.analysis import rank_scores

    rows = []
    # Grouped by target, strongest correlation first, as in the terminal report.
    # Pairs without samples (targets of a stage that did not run) are left out, as in the terminal report.
    usable = [dict(entry) for entry in predictive if isinstance(entry, Mapping) and entry.get("n") != 0]
    for entry in rank_scores(usable):
        rows.append({
            "score": entry.get("score"),
            "target": entry.get("target"),
            "spearman": entry.get("spearman"),
            "spearman_ci": _interval(entry.get("spearman_ci")),
            "kendall": entry.get("kendall"),
            "kendall_ci": _interval(entry.get("kendall_ci")),
            "n": entry.get("n"),
            "auroc": _auroc_text(entry.get("auroc")),
        })
    return rows


def _flags_section(flags: Sequence[Flag]) -> list[dict[str, Any]]:
    order = {"error": 0, "warning": 1, "info": 2}
    rows = []
    for flag in sorted(flags, key=lambda item: order.get(item.severity, 3)):
        rows.append({
            "code": flag.code,
            "severity": flag.severity,
            "stage": flag.stage,
            "message": flag.message,
            "explanation": FLAG_EXPLANATIONS.get(flag.code, "No further explanation is recorded for this flag; see its message."),
            "details": _flatten_scalars(flag.details) if flag.details else [],
        })
    return rows


def rerun_command(results: Results) -> str:
    """Return the command line that re-runs the evaluation: the recorded one, else one rebuilt from the config."""
    if results.command:
        return results.command
    config = results.config or {}
    words = ["robusteval", "run", results.model.path, "--data", str(config.get("data", results.data.name))]
    words += ["--seed", str(results.environment.seed)]
    if config.get("samples") is not None:
        words += ["--samples", str(config["samples"])]
    if config.get("arch"):
        words += ["--arch", str(config["arch"])]
    for option in config.get("eps") or []:
        words += ["--eps", str(option)]
    attacks = config.get("attacks")
    if isinstance(attacks, list):
        words += ["--attacks", ",".join(str(a) for a in attacks)]
    elif isinstance(attacks, str):
        words += ["--attacks", attacks]
    return shlex.join(words)


def _reproducibility(results: Results) -> dict[str, Any]:
    environment = results.environment
    versions = [
        ("robusteval", environment.robusteval), ("torch", environment.torch), ("foolbox", environment.foolbox),
        ("torchattacks", environment.torchattacks), ("python", environment.python), ("platform", environment.platform),
        ("device", environment.device), ("torch threads", environment.torch_threads), ("processes", environment.world_size),
    ]
    return {
        "versions": versions,
        "seed": environment.seed,
        "model_path": results.model.path,
        "model_sha256": results.model.sha256,
        "model_format": results.model.format,
        "data_name": results.data.name,
        "data_sha256": results.data.sha256,
        "sample_indices_sha256": results.data.sample_indices_sha256,
        "command": rerun_command(results),
        "created": results.created,
        "schema": results.schema,
        "geometry_method": results.geometry.get("method") if results.geometry else None,
    }


def report_context(results: Results) -> dict[str, Any]:
    """Return the template variables of the single-model report of ``results``."""
    return {
        "title": f"robusteval report: {model_label(results)}",
        "results": results,
        "model_label": model_label(results),
        "cards": _summary_cards(results),
        "robust": _robust_accuracy_section(results),
        "scatter": _scatter_section(results),
        "distributions": _distribution_section(results),
        "parameter_space": _parameter_space_section(results.parameter_space),
        "bounds": _bounds_section(results.bounds),
        "predictive": _predictive_section(results.predictive),
        "flags": _flags_section(results.flags),
        "reproducibility": _reproducibility(results),
    }


def render_html(results: Results) -> str:
    """Return the self-contained HTML report of one evaluation."""
    return _environment().get_template("report.html.j2").render(**report_context(results))


def write_html(results: Results, path: str | os.PathLike[str]) -> None:
    """Write :func:`render_html` of ``results`` to ``path`` as UTF-8."""
    _write(render_html(results), path)


def _write(text: str, path: str | os.PathLike[str]) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")


# The comparison report.


def _overlaid_robust_accuracy(comparison: Comparison) -> list[Markup]:
    charts = []
    for norm, epsilons in comparison.epsilons.items():
        series = [Series(row.label, epsilons, row.robust_accuracy[norm]) for row in comparison.rows]
        charts.append(line_chart(
            series, title=f"Robust accuracy against epsilon ({norm})",
            x_label=f"epsilon ({norm}, input units)", y_label="robust accuracy", y_range=(0.0, 1.0),
        ))
    return charts


def _overlaid_distributions(comparison: Comparison) -> list[Markup]:
    charts = []
    for norm in comparison.epsilons:
        samples = [
            (label, list(min_adversarial_distances(results, norm)))  # type: ignore[arg-type]
            for label, results in zip(comparison.labels, comparison.results)
        ]
        charts.append(histogram_chart(samples, title=f"Minimal adversarial distance ({norm})", x_label=f"distance ({norm})"))
    for norm in NORMS:
        samples = [
            (label, [getattr(s.certified_radius, norm) for s in results.samples])
            for label, results in zip(comparison.labels, comparison.results)
        ]
        if any(value is not None for _, values in samples for value in values):
            charts.append(histogram_chart(samples, title=f"Certified radius ({norm})", x_label=f"certified radius ({norm})"))
    return charts


def _overlaid_weight_noise(comparison: Comparison) -> Markup | None:
    series = []
    for label, results in zip(comparison.labels, comparison.results):
        for name, value in (results.parameter_space or {}).items():
            for entry in value if isinstance(value, list) else [value]:
                if _is_curve(entry):
                    mode = entry.get("mode")
                    series.append(Series(f"{label}: {name}{f' ({mode})' if mode else ''}", entry["scales"], entry["accuracy"]))
    if not series:
        return None
    return line_chart(
        series, title="Accuracy under parameter-space perturbations",
        x_label="relative perturbation scale", y_label="accuracy", y_range=(0.0, 1.0),
    )


def render_comparison_html(comparison: Comparison) -> str:
    """Return one self-contained HTML report with the compared models side by side and overlaid."""
    context = {
        "title": f"robusteval comparison: {', '.join(comparison.labels)}",
        "comparison": comparison,
        "robust_charts": _overlaid_robust_accuracy(comparison),
        "distribution_charts": _overlaid_distributions(comparison),
        "parameter_chart": _overlaid_weight_noise(comparison),
        "flags": [(label, _flags_section(r.flags)) for label, r in zip(comparison.labels, comparison.results)],
        "reproducibility": [(label, _reproducibility(r)) for label, r in zip(comparison.labels, comparison.results)],
    }
    return _environment().get_template("compare.html.j2").render(**context)


def write_comparison_html(comparison: Comparison, path: str | os.PathLike[str]) -> None:
    """Write :func:`render_comparison_html` of ``comparison`` to ``path`` as UTF-8."""
    _write(render_comparison_html(comparison), path)
