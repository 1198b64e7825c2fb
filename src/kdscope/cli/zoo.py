"""Commands that list the zoo: models (and which data they fit) and methods."""

from __future__ import annotations

import inspect
from typing import Annotated

import typer
from rich.table import Table

from kdscope.cli.app import command, console
from kdscope.data import fetch, load_data
from kdscope.methods import METHODS, method_info
from kdscope.models import MODEL_FITS, zoo_table


@command
def models(
    num_classes: Annotated[int, typer.Option(min=2, help="Classes of the classifier.")] = 10,
    in_channels: Annotated[int, typer.Option(min=1, help="Input channels.")] = 3,
    input_size: Annotated[int, typer.Option(min=1, help="Input height = width.")] = 32,
    data: Annotated[
        str | None,
        typer.Option(help="List the models for this dataset, sized on one of its examples."),
    ] = None,
) -> None:
    """List the model zoo with parameters and multiply-adds (MACs) at the given input size, and
    which models fit which data (task and kind of input)."""
    if data is None:
        rows = zoo_table(num_classes, in_channels, input_size)
        shape = "C x H x W"
    else:
        bundle = load_data(data)
        example = fetch(bundle.train, [0])[0]
        rows = zoo_table(
            bundle.num_classes,
            bundle.in_channels,
            task=bundle.task,
            inputs=bundle.inputs,
            example=example,
        )
        shape = "per example"
        view = f" ({bundle.view})" if bundle.view else ""
        console.print(f"{data}: {bundle.task}, {bundle.num_classes} classes, one example is "
                      f"{bundle.inputs}{view} of shape {tuple(example.shape[1:])}")  # fmt: skip
    table = Table("model", "params (M)", "MMACs", f"feature layers ({shape})")
    for row in rows:
        layers = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in row["features"].items())
        table.add_row(row["name"], f"{row['params'] / 1e6:.3f}", f"{row['macs'] / 1e6:.1f}", layers)
    console.print(table)
    if data is None:
        console.print(
            "Any torchvision classifier is also available as tv:<name> (e.g. tv:resnet18), any "
            "timm model as timm:<name> (e.g. timm:resnet10t; pip install 'kdscope[timm]')."
        )
        _print_fits()
    elif bundle.task == "language-modelling":
        console.print("Any local Hugging Face causal LM folder is also available as hf:<path>.")


def _print_fits() -> None:
    """The zoo by task and kind of input, and how datasets name theirs."""
    fits = Table("task", "inputs", "models", title="which models fit which data")
    groups: dict[tuple[str, str], list[str]] = {}
    for name, fit in sorted(MODEL_FITS.items()):
        for kind in fit.inputs:
            groups.setdefault((fit.task, kind), []).append(name)
    for (task, kind), names in sorted(groups.items()):
        fits.add_row(task, kind, ", ".join(names))
    console.print(fits)
    console.print(
        "Datasets give their task and inputs (kdscope models --data NAME): fsdd is image "
        "(log-mel) or waveform (data.options.input=waveform), sst2 tokens; any Hugging Face "
        "sequence classifier is hf:<local path>."
    )


@command
def methods(
    name: Annotated[str | None, typer.Argument(help="Show one method's documentation.")] = None,
) -> None:
    """List distillation methods with family, paper and defaults (or one method's docs)."""
    if name is not None:
        cls = METHODS.get(name)
        info = method_info(name)
        console.print(f"[bold]{name}[/bold] ({info['family']}) - {info['paper']}")
        console.print(inspect.cleandoc(cls.__doc__ or ""))
        console.print(f"default layers: {info['layers']}; needs: {', '.join(info['needs'])}")
        table = Table("parameter", "default", "accepted")
        for key, value in info["defaults"].items():
            table.add_row(key, repr(value), info["ranges"].get(key, "-"))
        console.print(table)
        return
    table = Table("method", "family", "paper", "defaults", "needs")
    for n in METHODS.names():
        info = method_info(n)
        defaults = ", ".join(f"{k}={v}" for k, v in info["defaults"].items())
        table.add_row(n, info["family"], info["paper"], defaults, ", ".join(info["needs"]))
    console.print(table)
