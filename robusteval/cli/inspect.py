"""``robusteval inspect``: how robusteval reads a model file, and whether it is ready to evaluate."""

from __future__ import annotations

from typing import Optional

import torch
import typer
from rich.table import Table
from rich.text import Text

from ._app import app, configure_logging, console, handle_errors


@app.command()
def inspect(
    model: str = typer.Argument(..., help="Model file, or zoo:<name> for a bundled model."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Also run the preflight checks on this data ('digits', .npz, .pt)."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Architecture for state_dict files, for example 'mlp:64-128-10'."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow loading a fully pickled model (runs code from the file)."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="Log details to standard error."),
) -> None:
    """Show a model's format, size and layers, which geometry path applies, and preflight findings."""
    from ..architectures import count_parameters, is_piecewise_linear
    from ..capabilities import capability_flags
    from ..data import load_data
    from ..eager import eager_equivalent
    from ..geometry import recover_chain
    from ..loading import load_model
    from ..preflight import preflight

    configure_logging(verbose)
    with handle_errors():
        loaded = load_model(model, arch=arch, trust_pickle=trust_pickle)
        network = loaded.module
        summary = Table.grid(padding=(0, 2))
        summary.add_column(style="bold", no_wrap=True)
        summary.add_column(overflow="fold")
        summary.add_row("file", Text(loaded.path))
        summary.add_row("sha256", loaded.sha256)
        summary.add_row("format", loaded.format)
        if loaded.architecture:
            summary.add_row("architecture", Text(loaded.architecture))
        summary.add_row("parameters", f"{count_parameters(network):,}")
        # The preflight runs first, so that data the model cannot take gets its own message.
        dataset = load_data(data) if data is not None else None
        report = preflight(network, dataset) if dataset is not None else None
        probe = dataset.x[:PROBE_SAMPLES] if dataset is not None else None
        summary.add_row("piecewise linear", _piecewise_linear_label(network, is_piecewise_linear(network, probe)))

        flags = []
        if dataset is not None and report is not None and probe is not None:
            summary.add_row("classes", str(report.num_classes))
            summary.add_row("data", Text(f"{dataset.name}: {len(dataset.y)} samples of shape {tuple(dataset.x.shape[1:])}"))
            if recover_chain(network, probe) is not None:
                path = "exact closed form (Linear/ReLU chain)"
            elif eager_equivalent(network, probe) is None:
                path = "double backward, about N*K backward passes (slow on large data)"
            else:
                path = "forward-over-reverse products"
            summary.add_row("tangent sensitivity", path)
            # The same checks `run` makes, so that a model it would flag is flagged here first.
            flags = [*report.flags, *capability_flags(network, probe, dataset.bounds)]
        console.print(summary)

        layers = Table(title="Layers", title_justify="left")
        layers.add_column("name")
        layers.add_column("type")
        layers.add_column("parameters", justify="right")
        for name, module in network.named_modules():
            if name and not any(True for _ in module.children()):
                kind = str(getattr(module, "original_name", type(module).__name__))
                count = sum(parameter.numel() for parameter in module.parameters(recurse=False))
                layers.add_row(Text(name), Text(kind), f"{count:,}")
        if layers.row_count:
            console.print(layers)

        for flag in flags:
            console.print(Text(f"[{flag.severity}] {flag.code}: {flag.message}"))
        if data is not None and not flags:
            console.print(Text("preflight: no findings", style="green"))
        if data is None:
            console.print(Text("Pass --data to run the preflight checks and see which analyses this model supports."))


# Input samples the checks run on, as many as `run` passes to the same parameter-space check.
PROBE_SAMPLES = 8


def _piecewise_linear_label(network: torch.nn.Module, piecewise_linear: bool) -> str:
    if piecewise_linear:
        return "yes"
    if isinstance(network, torch.jit.ScriptModule):
        return "cannot tell (a TorchScript module whose layers robusteval cannot list)"
    return "no"
