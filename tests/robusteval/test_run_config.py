"""The [run] table of robusteval.toml."""

from __future__ import annotations

import pytest

from robusteval.attacks import parse_eps_options
from robusteval.run_config import load_run_table


def write(tmp_path, text: str):
    path = tmp_path / "robusteval.toml"
    path.write_text(text)
    return path


def test_eps_table_becomes_cli_options(tmp_path):
    path = write(tmp_path, '[run]\nsamples = 50\nattacks = ["fmn", "pgd"]\n[run.eps]\nlinf = [0.01, 0.03]\nl2 = [1]\n')
    settings = load_run_table(path)
    assert settings["samples"] == 50
    assert settings["attacks"] == "fmn,pgd"
    threat_models = {tm.norm: tm.epsilons for tm in parse_eps_options(settings["eps"])}
    assert threat_models == {"linf": (0.01, 0.03), "l2": (1.0,)}


def test_file_without_run_table_gives_nothing(tmp_path):
    assert load_run_table(write(tmp_path, "[gate]\nmin_clean_accuracy = 0.9\n")) == {}


@pytest.mark.parametrize("text, message", [
    ("[run]\nsampels = 5\n", "Unknown key 'sampels'"),
    ("[run]\nsamples = 'five'\n", "samples"),
    ("[run]\nparameter_space = 1\n", "true or false"),
    ("[run]\nsamples = true\n", "samples"),
    ("[run.eps]\nlinf = []\n", "non-empty list"),
    ("[run.eps]\nl3 = [1]\n", "norm"),
    ("run = 3\n", "table"),
    ("[run\n", "not valid TOML"),
    ("[run]\nblock_size = 0\n", r"block_size .* a positive integer, but got 0"),
    ("[run]\nmemory_budget = -5\n", r"memory_budget .* MiB, an integer >= 16, but got -5"),
    ("[run]\nmemory_budget = 1\n", r"memory_budget .* but got 1\."),
])
def test_invalid_tables_rejected(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        load_run_table(write(tmp_path, text))


def test_run_command_takes_defaults_from_config(tmp_path):
    import json

    from typer.testing import CliRunner

    from robusteval.cli import app

    config = write(tmp_path, '[run]\nsamples = 5\nattacks = ["fgsm"]\nparameter_space = false\n'
                             '[run.eps]\nlinf = [0.05, 0.1]\n')
    out = tmp_path / "out"
    # --seed on the command line wins over the file; everything else comes from the file.
    result = CliRunner().invoke(app, ["run", "--config", str(config), "--seed", "7", "--out", str(out), "--no-html"])
    assert result.exit_code == 0, result.output
    payload = json.loads((out / "results.json").read_text())
    assert payload["data"]["num_samples"] == 5
    assert payload["environment"]["seed"] == 7
    assert [(tm["norm"], tm["epsilons"], tm["attacks"]) for tm in payload["threat_models"]] == [
        ("linf", [0.05, 0.1], ["fgsm"])
    ]
    assert payload["parameter_space"] is None


def test_run_command_rejects_invalid_config(tmp_path):
    from typer.testing import CliRunner

    from robusteval.cli import app

    config = write(tmp_path, "[run]\nsampels = 5\n")
    result = CliRunner().invoke(app, ["run", "--config", str(config), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "Unknown key 'sampels'" in result.output
