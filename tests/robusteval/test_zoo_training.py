"""Deterministic training of the zoo: bit-identical reruns, PGD, label noise, the gradient penalty."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from robusteval.cli import app
from robusteval.errors import OutputExistsError
from robusteval.zoo.build import load_zoo_index, train_zoo
from robusteval.zoo.members import FAMILY, QUICK_EPOCHS, select_members
from robusteval.zoo.training import (
    TrainingConfig,
    _minibatch_loss,
    corrupt_labels,
    deterministic_cpu,
    pgd_linf,
)

# Plain SGD, PGD adversarial training and the double-backward gradient penalty: the three code
# paths whose determinism could differ.
SUBSET = ["adversarial-0.05", "width-16", "input-gradient-0.01"]


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def quick_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("zoo") / "first"
    train_zoo(root, seed=3, members=SUBSET, quick=True)
    return root


def test_zoo_rerun_bit_identical(quick_zoo: Path, tmp_path: Path) -> None:
    train_zoo(tmp_path / "second", seed=3, members=SUBSET, quick=True)
    first = _all_files(quick_zoo)
    second = _all_files(tmp_path / "second")
    assert sorted(first) == sorted(second)
    for name in first:
        assert first[name] == second[name], name


def test_zoo_other_seed_differs(quick_zoo: Path, tmp_path: Path) -> None:
    train_zoo(tmp_path / "other", seed=4, members=["width-16"], quick=True)
    assert (tmp_path / "other/width-16/model.pt").read_bytes() != (quick_zoo / "width-16/model.pt").read_bytes()


def test_zoo_layout_and_index(quick_zoo: Path) -> None:
    index = load_zoo_index(quick_zoo)
    assert [entry.name for entry in index.members] == SUBSET
    assert index.seed == 3
    assert index.quick is True
    for entry in index.members:
        assert len(entry.checkpoints) == QUICK_EPOCHS
        assert entry.checkpoints[0] == f"{entry.name}/epoch-001.pt"
        for relative in entry.checkpoints:
            assert (quick_zoo / relative).is_file()
        # The final model is the last checkpoint.
        assert (quick_zoo / entry.model).read_bytes() == (quick_zoo / entry.checkpoints[-1]).read_bytes()


def test_zoo_metadata_matches_weights(quick_zoo: Path) -> None:
    import hashlib

    from robusteval.architectures import build_architecture
    from robusteval.digits import digits_split

    x, y = (torch.from_numpy(array) for array in digits_split("test"))
    for name in SUBSET:
        metadata = json.loads((quick_zoo / name / "model.json").read_text(encoding="utf-8"))
        weights = (quick_zoo / name / "model.pt").read_bytes()
        assert metadata["sha256"] == hashlib.sha256(weights).hexdigest()
        assert metadata["training"]["epochs"] == QUICK_EPOCHS
        assert metadata["training"]["seed"] == 3
        assert len(metadata["history"]) == QUICK_EPOCHS
        model = build_architecture(metadata["architecture"])
        model.load_state_dict(torch.load(quick_zoo / name / "model.pt", weights_only=True))
        with torch.no_grad():
            correct = int((model.eval()(x).argmax(dim=1) == y).sum())
        assert correct == round(metadata["test_accuracy"] * len(y))


def test_zoo_rejects_nonempty_output(quick_zoo: Path) -> None:
    with pytest.raises(OutputExistsError, match="not empty"):
        train_zoo(quick_zoo, seed=3, members=["width-16"], quick=True)


def test_zoo_overwrite_replaces_index(tmp_path: Path) -> None:
    (tmp_path / "old.txt").write_text("earlier run", encoding="utf-8")
    index = train_zoo(tmp_path, seed=0, members=["width-16"], quick=True, overwrite=True)
    assert [entry.name for entry in index.members] == ["width-16"]
    assert load_zoo_index(tmp_path).members == index.members


def test_select_members_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="no-such-member"):
        select_members(["plain", "no-such-member"])


def test_select_members_keeps_family_order() -> None:
    chosen = select_members(["width-16", "plain"])
    assert [member.name for member in chosen] == ["plain", "width-16"]


def test_family_covers_every_factor() -> None:
    configs = [member.config for member in FAMILY]
    assert any(config.adversarial_epsilon > 0 for config in configs)
    assert len({config.weight_decay for config in configs}) >= 4
    assert len({config.label_noise for config in configs}) >= 4
    assert len({config.architecture for config in configs}) >= 6
    assert any(config.input_gradient_penalty > 0 for config in configs)


def test_corrupt_labels_exact_fraction() -> None:
    y = torch.arange(200) % 10
    noisy = corrupt_labels(y, 0.25, 10, torch.Generator().manual_seed(0))
    changed = noisy != y
    assert int(changed.sum()) == 50
    assert int(noisy.min()) >= 0
    assert int(noisy.max()) <= 9


def test_corrupt_labels_zero_fraction() -> None:
    y = torch.arange(30) % 3
    assert torch.equal(corrupt_labels(y, 0.0, 3, torch.Generator().manual_seed(0)), y)


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()


def test_pgd_stays_in_ball_and_bounds() -> None:
    model = _tiny_model()
    x = torch.rand(20, 6, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 3, (20,), generator=torch.Generator().manual_seed(2))
    adversarial = pgd_linf(model, x, y, epsilon=0.1, steps=10, step_size=0.03, generator=torch.Generator().manual_seed(3))
    assert float((adversarial - x).abs().max()) <= 0.1 + 1e-6
    assert float(adversarial.min()) >= 0.0
    assert float(adversarial.max()) <= 1.0


def test_pgd_increases_loss() -> None:
    model = _tiny_model()
    x = torch.rand(50, 6, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(dim=1)
    adversarial = pgd_linf(model, x, y, epsilon=0.2, steps=20, step_size=0.02, random_start=False)
    with torch.no_grad():
        clean = F.cross_entropy(model(x), y, reduction="none")
        attacked = F.cross_entropy(model(adversarial), y, reduction="none")
    # Signed ascent from x on a piecewise-linear loss cannot end below the start for these
    # small steps; allow float32 rounding.
    assert bool((attacked >= clean - 1e-6).all())
    assert float(attacked.mean()) > float(clean.mean()) + 0.01


def test_gradient_penalty_matches_torch_func() -> None:
    model = _tiny_model()
    x = torch.rand(5, 6, generator=torch.Generator().manual_seed(4))
    y = torch.tensor([0, 1, 2, 0, 1])
    config = TrainingConfig(architecture="mlp:6-8-3", input_gradient_penalty=0.3)
    loss = _minibatch_loss(model, config, x, y, torch.Generator())

    def sample_loss(row: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(row.unsqueeze(0)), label.unsqueeze(0))

    gradients = torch.func.vmap(torch.func.grad(sample_loss))(x, y)  # (5, 6)
    expected = F.cross_entropy(model(x), y) + 0.3 * gradients.pow(2).sum(dim=1).mean()
    assert loss.detach().item() == pytest.approx(expected.detach().item(), rel=1e-6)


def test_config_rejects_pgd_without_steps() -> None:
    with pytest.raises(ValueError, match="adversarial_steps"):
        TrainingConfig(architecture="mlp:64-10", adversarial_epsilon=0.1)


def test_config_rejects_label_noise_one() -> None:
    with pytest.raises(ValueError, match="label_noise"):
        TrainingConfig(architecture="mlp:64-10", label_noise=1.0)


def test_deterministic_cpu_restores_settings() -> None:
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    with deterministic_cpu():
        assert torch.get_num_threads() == 1
        assert torch.are_deterministic_algorithms_enabled()
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic


def test_cli_zoo_train(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["zoo", "train", "--out", str(tmp_path / "zoo"), "--quick", "--members", "width-16"])
    assert result.exit_code == 0, result.output
    assert "width-16" in result.output
    assert (tmp_path / "zoo/zoo.json").is_file()

    again = runner.invoke(app, ["zoo", "train", "--out", str(tmp_path / "zoo"), "--quick", "--members", "width-16"])
    assert again.exit_code == 2


def test_cli_zoo_train_unknown_member(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["zoo", "train", "--out", str(tmp_path / "zoo"), "--members", "bogus"])
    assert result.exit_code == 2
    assert not (tmp_path / "zoo").exists()
