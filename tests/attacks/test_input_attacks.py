"""Input-space attacks on small networks trained on real digits."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from robusteval._types import Bounds
from robusteval.attacks import (
    AttackBudget,
    InputAttackOutcome,
    ThreatModel,
    default_threat_models,
    run_input_attacks,
    summarize_threat_models,
)
from robusteval.attacks.threat_models import epsilon_with_tolerance, perturbation_norm
from robusteval.results import NormPair, SampleRecord

pytestmark = pytest.mark.usefixtures("single_thread")

UNIT = Bounds(0.0, 1.0)
THREAT_MODELS = [ThreatModel("linf", (0.02, 0.05, 0.1, 0.2, 1.0)), ThreatModel("l2", (0.25, 0.5, 1.0, 8.0))]


def _check_outcome_consistency(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, outcome: InputAttackOutcome, threat_models: list[ThreatModel]
) -> None:
    """Check the outcome against the model itself: every counted example is a real adversarial example."""
    with torch.no_grad():
        clean_correct = model(x).argmax(dim=1) == y
    assert torch.equal(outcome.correct, clean_correct)

    for threat_model in threat_models:
        norm = threat_model.norm
        distances = outcome.min_distance[norm]
        broken = ~torch.isnan(distances)
        assert not bool((broken & ~clean_correct).any()), "misclassified samples must not be attacked"

        examples = outcome.adversarial_examples[norm]
        assert bool(torch.isnan(examples[~broken]).all())
        if bool(broken.any()):
            adversarial = examples[broken]
            assert bool((adversarial >= UNIT.lower).all())
            assert bool((adversarial <= UNIT.upper).all())
            with torch.no_grad():
                predictions = model(adversarial).argmax(dim=1)
            assert bool((predictions != y[broken]).all())
            recomputed = perturbation_norm(adversarial, x[broken], norm)
            torch.testing.assert_close(recomputed, distances[broken], rtol=1e-12, atol=0)

        robust = outcome.robust[norm]
        limits = torch.tensor([epsilon_with_tolerance(eps, UNIT) for eps in threat_model.epsilons], dtype=torch.float64)
        expected_robust = clean_correct[:, None] & ~(torch.nan_to_num(distances, nan=math.inf)[:, None] <= limits)
        assert torch.equal(robust, expected_robust)
        for name, per_norm in outcome.success.items():
            if norm in per_norm:
                assert not bool((per_norm[norm] & ~clean_correct[:, None]).any())
                assert not bool((per_norm[norm] & robust).any()), f"{name} broke a sample counted as robust"


@pytest.mark.parametrize("network", ["mlp", "cnn"])
def test_robust_accuracy_monotone_and_zero(
    network: str,
    digits_mlp: nn.Module,
    digits_cnn: nn.Module,
    digits_test: tuple[torch.Tensor, torch.Tensor],
    fast_budget: AttackBudget,
    sample_records: Callable[..., list[SampleRecord]],
) -> None:
    model = digits_mlp if network == "mlp" else digits_cnn
    x, y = digits_test
    if network == "cnn":
        x = x.reshape(-1, 1, 8, 8)
    attacks = ["fmn", "pgd", "apgd-ce", "deepfool", "fgsm"]
    outcome = run_input_attacks(
        model, x, y, threat_models=THREAT_MODELS, attacks=attacks, bounds=UNIT, seed=0, budget=fast_budget
    )
    _check_outcome_consistency(model, x, y, outcome, THREAT_MODELS)

    samples = sample_records(outcome, y)
    results = summarize_threat_models(samples, THREAT_MODELS, attacks, outcome.skipped, outcome.seconds_per_norm)
    clean_accuracy = float(outcome.correct.float().mean())
    for result in results:
        accuracy = result.robust_accuracy
        assert all(later <= earlier for earlier, later in zip(accuracy, accuracy[1:])), accuracy
        assert accuracy[0] <= clean_accuracy
        assert accuracy[-1] == 0.0
        assert any(value < accuracy[0] for value in accuracy), "the grid should break some samples"
        for name in attacks:
            single = result.per_attack_robust_accuracy[name]
            assert all(ensemble <= alone for ensemble, alone in zip(accuracy, single)), name
        assert set(result.attack_seconds) == set(attacks)
        for index, rate in enumerate(result.attack_success_rate):
            correct = sum(sample.correct for sample in samples)
            robust = sum(sample.robust[result.norm][index] for sample in samples)
            assert rate == pytest.approx((correct - robust) / correct)


def test_default_digits_grid_spans_high_to_zero(
    digits_mlp: nn.Module,
    digits_test: tuple[torch.Tensor, torch.Tensor],
    fast_budget: AttackBudget,
    sample_records: Callable[..., list[SampleRecord]],
) -> None:
    x, y = digits_test
    threat_models = default_threat_models((64,), UNIT)
    outcome = run_input_attacks(
        digits_mlp, x, y, threat_models=threat_models, attacks=["fmn", "apgd-ce"], bounds=UNIT, seed=0,
        budget=fast_budget,
    )
    results = summarize_threat_models(sample_records(outcome, y), threat_models, ["fmn", "apgd-ce"], {}, {})
    for result in results:
        assert result.robust_accuracy[0] >= 0.8, (result.norm, result.robust_accuracy)
        assert min(result.robust_accuracy[:-1]) == 0.0, (result.norm, result.robust_accuracy)


def test_standard_suite_on_flat_inputs(
    digits_mlp: nn.Module,
    digits_test: tuple[torch.Tensor, torch.Tensor],
    fast_budget: AttackBudget,
) -> None:
    x, y = digits_test[0][:16], digits_test[1][:16]
    threat_models = [ThreatModel("linf", (0.1, 1.0)), ThreatModel("l2", (1.0,))]
    outcome = run_input_attacks(
        digits_mlp, x, y, threat_models=threat_models, attacks="standard", bounds=UNIT, seed=0, budget=fast_budget
    )
    assert set(outcome.success) == {"fmn", "deepfool", "pgd", "autoattack"}
    assert outcome.skipped == {}
    assert outcome.flags == []
    _check_outcome_consistency(digits_mlp, x, y, outcome, threat_models)

    autoattack = outcome.success["autoattack"]["linf"]
    pgd = outcome.success["pgd"]["linf"]
    assert bool(autoattack[:, 0].any()), "AutoAttack should break some samples at Linf 0.1"
    assert int(autoattack[:, 0].sum()) >= int(pgd[:, 0].sum()) - 1
    assert bool(autoattack[:, 1][outcome.correct].all())


def test_autoattack_image_inputs(
    digits_cnn: nn.Module, digits_test: tuple[torch.Tensor, torch.Tensor], fast_budget: AttackBudget
) -> None:
    x, y = digits_test[0][:12].reshape(-1, 1, 8, 8), digits_test[1][:12]
    threat_models = [ThreatModel("linf", (0.1, 1.0))]
    outcome = run_input_attacks(
        digits_cnn, x, y, threat_models=threat_models, attacks=["autoattack", "square"], bounds=UNIT, seed=0,
        budget=fast_budget,
    )
    _check_outcome_consistency(digits_cnn, x, y, outcome, threat_models)
    assert outcome.adversarial_examples["linf"].shape == x.shape
    assert bool(outcome.success["autoattack"]["linf"][:, 1][outcome.correct].all())


@pytest.mark.parametrize("classes", [(3, 8), (1, 7, 9)])
def test_autoattack_few_class_model(
    classes: tuple[int, ...],
    few_class_mlp: Callable[[tuple[int, ...]], nn.Module],
    few_class_test: Callable[[tuple[int, ...]], tuple[torch.Tensor, torch.Tensor]],
    fast_budget: AttackBudget,
) -> None:
    model = few_class_mlp(classes)
    x, y = few_class_test(classes)
    x, y = x[:16], y[:16]
    threat_models = [ThreatModel("linf", (0.1, 1.0)), ThreatModel("l2", (1.0, 8.0))]
    outcome = run_input_attacks(
        model, x, y, threat_models=threat_models, attacks=["autoattack", "apgd-t", "fab", "deepfool"],
        bounds=UNIT, seed=0, budget=fast_budget,
    )
    assert "apgd-t" not in outcome.success
    assert "at least 4 classes" in outcome.skipped["apgd-t"]
    assert "autoattack/apgd-t" in outcome.skipped
    assert set(outcome.success) == {"autoattack", "fab", "deepfool"}
    _check_outcome_consistency(model, x, y, outcome, threat_models)
    for norm in ("linf", "l2"):
        assert bool(outcome.success["autoattack"][norm][:, -1][outcome.correct].all())
        assert bool(outcome.robust[norm][:, -1].logical_not().all())


def test_same_seed_same_outcome(
    digits_mlp: nn.Module, digits_test: tuple[torch.Tensor, torch.Tensor], fast_budget: AttackBudget
) -> None:
    x, y = digits_test[0][:12], digits_test[1][:12]
    threat_models = [ThreatModel("linf", (0.05, 0.1)), ThreatModel("l2", (0.5,))]
    attacks = ["pgd", "apgd-ce", "square", "fmn", "fab"]

    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first = run_input_attacks(digits_mlp, x, y, threat_models=threat_models, attacks=attacks, bounds=UNIT, seed=7,
                              budget=fast_budget)
    assert torch.equal(torch.random.get_rng_state(), state), "attacks must not change the global generator"
    torch.manual_seed(999)
    second = run_input_attacks(digits_mlp, x, y, threat_models=threat_models, attacks=attacks, bounds=UNIT, seed=7,
                               budget=fast_budget)

    for norm in ("linf", "l2"):
        torch.testing.assert_close(first.min_distance[norm], second.min_distance[norm], rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(first.adversarial_examples[norm], second.adversarial_examples[norm], rtol=0, atol=0,
                                   equal_nan=True)
        assert first.min_distance_attack[norm] == second.min_distance_attack[norm]
        for name in attacks:
            assert torch.equal(first.success[name][norm], second.success[name][norm])


def test_misclassified_samples_not_attacked(
    digits_mlp: nn.Module,
    digits_test: tuple[torch.Tensor, torch.Tensor],
    fast_budget: AttackBudget,
    sample_records: Callable[..., list[SampleRecord]],
) -> None:
    x, y = digits_test[0][:10], digits_test[1][:10].clone()
    wrong = torch.tensor([1, 4, 7])
    y[wrong] = (y[wrong] + 1) % 10
    threat_models = [ThreatModel("linf", (0.05, 1.0))]
    outcome = run_input_attacks(digits_mlp, x, y, threat_models=threat_models, attacks="quick", bounds=UNIT, seed=0,
                                budget=fast_budget)

    assert not bool(outcome.correct[wrong].any())
    assert bool(torch.isnan(outcome.min_distance["linf"][wrong]).all())
    assert outcome.min_distance_attack["linf"][1] is None
    for per_norm in outcome.success.values():
        assert not bool(per_norm["linf"][wrong].any())
    assert not bool(outcome.robust["linf"][wrong].any())

    samples = sample_records(outcome, y)
    (result,) = summarize_threat_models(samples, threat_models, ["fmn", "pgd"], {}, {})
    correct = int(outcome.correct.sum())
    robust_at_small = int(outcome.robust["linf"][:, 0].sum())
    assert result.robust_accuracy[0] == pytest.approx(robust_at_small / 10)
    assert result.attack_success_rate[0] == pytest.approx((correct - robust_at_small) / correct)
    assert result.robust_accuracy[1] == 0.0
    assert result.attack_success_rate[1] == 1.0
    assert samples[1].min_adversarial_distance.linf is None


def _record(correct: bool, robust: list[bool], success: dict[str, list[bool]]) -> SampleRecord:
    return SampleRecord(
        index=0, label=0, prediction=0, correct=correct, tangent_sensitivity=[], region_distance=NormPair(),
        linear_decision_distance=NormPair(), certified_radius=NormPair(), min_adversarial_distance=NormPair(),
        robust={"l2": robust}, attack_success={name: {"l2": values} for name, values in success.items()},
    )


def test_summary_of_hand_built_records() -> None:
    samples = [
        _record(True, [True, True], {"pgd": [False, False], "fmn": [False, False]}),
        _record(True, [True, False], {"pgd": [False, True], "fmn": [False, False]}),
        _record(True, [False, False], {"pgd": [False, False], "fmn": [True, True]}),
        _record(False, [False, False], {"pgd": [False, False], "fmn": [False, False]}),
    ]
    threat_models = [ThreatModel("l2", (0.5, 1.0))]
    (result,) = summarize_threat_models(
        samples, threat_models, ["pgd", "fmn", "cw", "fgsm"], {"apgd-t": "needs 4 classes"},
        {"l2": {"pgd": 1.5, "fmn": 0.5}},
    )
    assert result.robust_accuracy == [2 / 4, 1 / 4]
    assert result.attack_success_rate == [1 / 3, 2 / 3]
    assert result.per_attack_robust_accuracy["pgd"] == [3 / 4, 2 / 4]
    assert result.per_attack_robust_accuracy["fmn"] == [2 / 4, 2 / 4]
    assert result.per_attack_robust_accuracy["fgsm"] == [3 / 4, 3 / 4]  # no entries: correct samples count as robust
    assert result.attack_seconds == {"pgd": 1.5, "fmn": 0.5}
    assert result.skipped_attacks == {"apgd-t": "needs 4 classes"}


def test_summary_lists_norm_skips_and_rejects_missing() -> None:
    sample = _record(True, [True], {})
    sample.robust = {"linf": [True]}
    (result,) = summarize_threat_models([sample], [ThreatModel("linf", (0.1,))], ["cw", "pgd"], {}, {"pgd": 2.0})
    assert result.attacks == ["pgd"]
    assert "supports only l2" in result.skipped_attacks["cw"]
    assert result.attack_seconds == {"pgd": 2.0}

    with pytest.raises(ValueError, match="record_outcome"):
        summarize_threat_models([sample], [ThreatModel("l2", (0.1,))], ["pgd"], {}, {})


class _ModeRecorder(nn.Module):
    """Wraps a model and records the training flag and batch size of every forward call."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.training_flags: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.training_flags.append(self.training)
        return self.model(x)


def test_model_mode_kept_eval_and_restored(
    digits_mlp: nn.Module, digits_test: tuple[torch.Tensor, torch.Tensor], fast_budget: AttackBudget
) -> None:
    recorder = _ModeRecorder(digits_mlp).train()
    x, y = digits_test[0][:6], digits_test[1][:6]
    run_input_attacks(recorder, x, y, threat_models=[ThreatModel("linf", (0.1,))],
                      attacks=["apgd-ce", "square", "pgd", "fab"], bounds=UNIT, seed=0, budget=fast_budget)
    assert recorder.training_flags
    assert not any(recorder.training_flags), "every forward pass of an attack must run in eval mode"
    assert recorder.training and digits_mlp.training
    assert all(parameter.requires_grad for parameter in recorder.parameters())
    digits_mlp.eval()


class _Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, int]] = []

    def start(self, stage: str, total: int) -> None:
        self.events.append(("start", stage, total))

    def advance(self, stage: str, steps: int = 1) -> None:
        self.events.append(("advance", stage, steps))

    def finish(self, stage: str) -> None:
        self.events.append(("finish", stage, 0))


def test_progress_counts_attack_runs(
    digits_mlp: nn.Module, digits_test: tuple[torch.Tensor, torch.Tensor], fast_budget: AttackBudget
) -> None:
    progress = _Recorder()
    x, y = digits_test[0][:4], digits_test[1][:4]
    threat_models = [ThreatModel("linf", (0.05, 0.1, 0.2)), ThreatModel("l2", (0.5,))]
    run_input_attacks(digits_mlp, x, y, threat_models=threat_models, attacks=["pgd", "fmn", "cw"], bounds=UNIT,
                      seed=0, progress=progress, budget=fast_budget)
    # pgd: 3 + 1 epsilons, fmn: one run per norm, cw: one run under l2.
    assert progress.events[0] == ("start", "input attacks", 7)
    assert sum(steps for kind, _, steps in progress.events if kind == "advance") == 7
    assert progress.events[-1] == ("finish", "input attacks", 0)


class _ShiftedBounds(nn.Module):
    """The digits MLP on inputs in [-1, 1]: maps them back to [0, 1] first."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x + 1) / 2)


def test_other_bounds_match_unit_bounds(
    digits_mlp: nn.Module, digits_test: tuple[torch.Tensor, torch.Tensor], fast_budget: AttackBudget
) -> None:
    x, y = digits_test[0][:16], digits_test[1][:16]
    attacks = ["apgd-ce", "square", "fmn"]
    unit = run_input_attacks(digits_mlp, x, y, threat_models=[ThreatModel("linf", (0.1,))], attacks=attacks,
                             bounds=UNIT, seed=0, budget=fast_budget)
    shifted = run_input_attacks(_ShiftedBounds(digits_mlp), 2 * x - 1, y, threat_models=[ThreatModel("linf", (0.2,))],
                                attacks=attacks, bounds=Bounds(-1.0, 1.0), seed=0, budget=fast_budget)
    assert shifted.flags == []
    examples = shifted.adversarial_examples["linf"]
    found = ~torch.isnan(examples[:, 0])
    assert bool(found.any())
    assert bool((examples[found] >= -1).all())
    assert bool((examples[found] <= 1).all())
    for name in attacks:
        difference = (unit.success[name]["linf"] != shifted.success[name]["linf"]).sum()
        assert int(difference) <= 1, name
    assert torch.equal(unit.correct, shifted.correct)


@pytest.mark.parametrize(
    "change, error, fragment",
    [
        (lambda x, y: (x.long(), y), TypeError, "floating-point tensor"),
        (lambda x, y: (x, y.float()), TypeError, "integer tensor"),
        (lambda x, y: (x, y[:-1]), TypeError, "integer tensor of shape"),
        (lambda x, y: (x + 2, y), ValueError, "within the bounds"),
        (lambda x, y: (x.masked_fill(x > 0.5, math.nan), y), ValueError, "finite inputs"),
        (lambda x, y: (x, y + 10), ValueError, "labels in \\[0, 9\\]"),
    ],
)
def test_invalid_arguments_raise(
    change: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    error: type[Exception],
    fragment: str,
    digits_mlp: nn.Module,
    digits_test: tuple[torch.Tensor, torch.Tensor],
) -> None:
    x, y = change(digits_test[0][:4], digits_test[1][:4])
    with pytest.raises(error, match=fragment):
        run_input_attacks(digits_mlp, x, y, threat_models=[ThreatModel("linf", (0.1,))], attacks="quick", bounds=UNIT,
                          seed=0)


def test_duplicate_norms_raise(digits_mlp: nn.Module, digits_test: tuple[torch.Tensor, torch.Tensor]) -> None:
    with pytest.raises(ValueError, match="one threat model per norm"):
        run_input_attacks(digits_mlp, *digits_test, threat_models=[ThreatModel("linf", (0.1,)),
                          ThreatModel("linf", (0.2,))], attacks="quick", bounds=UNIT, seed=0)


@pytest.mark.parametrize("count", [0, 1])
def test_tiny_blocks_thorough_suite(
    count: int, digits_mlp: nn.Module, digits_test: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """Empty and single-sample blocks run every attack, including torchattacks' batch-of-one paths."""
    budget = AttackBudget(steps=5, square_queries=20, cw_steps=5, cw_binary_search_steps=2)
    x, y = digits_test[0][:count], digits_test[1][:count]
    threat_models = [ThreatModel("linf", (0.1, 1.0)), ThreatModel("l2", (8.0,))]
    outcome = run_input_attacks(digits_mlp, x, y, threat_models=threat_models, attacks="thorough", bounds=UNIT,
                                seed=0, budget=budget)
    assert outcome.flags == []
    assert set(outcome.success) == {"fgsm", "pgd", "apgd-ce", "apgd-t", "square", "autoattack", "fmn", "deepfool", "cw",
                                    "fab"}
    for name, per_norm in outcome.success.items():
        for norm, success in per_norm.items():
            assert success.shape == (count, len(outcome.epsilons[norm])), (name, norm)
    if count:
        assert bool(outcome.correct[0])
        assert not bool(outcome.robust["linf"][0, 1])
        assert not math.isnan(float(outcome.min_distance["l2"][0]))
