"""The ``kdscope`` application: its options, the command decorator that turns any error into one
sentence, and the entry point.

Every command reports a failure as one sentence and exits 2 (3 for a non-finite loss, 130 on
Ctrl-C); ``kdscope --debug ...`` or ``KDSCOPE_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import click
import typer
import typer.core
from rich.console import Console

from kdscope.train import NonFiniteLossError

app = typer.Typer(
    help="kdscope: distill neural networks and measure what knowledge moved.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
_debug = {"on": False}

ConfigArg = Annotated[Path | None, typer.Argument(help="YAML run config (see configs/).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a field: key.sub=value.")]
TrustOpt = Annotated[
    bool,
    typer.Option(
        "--trust-checkpoints",
        help="Load checkpoints that hold more than tensors (unpickling can run code: only for "
        "files from a source you trust).",
    ),
]
FileList = list[Path] | None
# The options train and distill share, each naming the config field it sets.
DataOpt = Annotated[str | None, typer.Option(help="Dataset name (data.name).")]
EpochsOpt = Annotated[int | None, typer.Option(help="train.epochs")]
NameOpt = Annotated[str | None, typer.Option(help="Run name (directory under --out).")]
OutOpt = Annotated[Path | None, typer.Option(help="Directory of runs.")]
ResumeOpt = Annotated[bool, typer.Option(help="Continue from checkpoints/last.pt.")]


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
) -> None:
    _debug["on"] = debug or os.environ.get("KDSCOPE_DEBUG", "") not in ("", "0")


def fail(message: str, code: int = 2) -> None:
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


class GreedyOptions(typer.core.TyperCommand):
    """A command whose options named in ``greedy`` take every value up to the next option:
    ``--from-logits t.npy s0.npy s1.npy`` is read as ``--from-logits t.npy --from-logits s0.npy
    --from-logits s1.npy`` (click options otherwise take one value each)."""

    greedy: tuple[str, ...] = ()

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        spread, flag = [], None
        for arg in args:
            if arg.startswith("-"):
                name = arg.partition("=")[0]
                flag = name if name in self.greedy else None
                spread.append(arg)
            elif flag is not None and spread[-1] != flag:
                spread += [flag, arg]
            else:
                spread.append(arg)
        return super().parse_args(ctx, spread)


def command(fn=None, *, greedy: tuple[str, ...] = ()):
    """Register ``fn`` as a command whose errors are reported as one sentence (``greedy``: see
    :class:`GreedyOptions`)."""
    if fn is None:
        return functools.partial(command, greedy=greedy)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as err:
            if _debug["on"]:
                raise
            code = 3 if isinstance(err, NonFiniteLossError) else 2
            known = isinstance(err, (ValueError, TypeError, OSError, RuntimeError, ImportError))
            text = str(err) if known and str(err) else f"{type(err).__name__}: {err}"
            fail(f"{text} (--debug shows the traceback)" if not known else text, code)

    if not greedy:
        return app.command()(wrapper)
    cls = type("Greedy", (GreedyOptions,), {"greedy": greedy})
    return app.command(cls=cls)(wrapper)


def main() -> None:
    # SIGTERM (cluster pre-emption, `kill`) takes the same exact-checkpoint path as Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    sys.exit(app())
