"""The `derisk` command line: parse, call one library function, render.

One module per group of commands (`roadmap`: plan, whatif, simulate, validate, examples,
record; `insight`: explain, sensitivity, graph, report; `laws`: fit, optimal, predict;
`runs`: train, sweep, runs; `loop`: run, laws; `quiz`: quiz) over `_output`, which holds
the consoles, the JSON writer, the error choke point and the number formatter.
A user's mistake is one red line per problem and exit code 2; --debug shows the traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from derisk.cli import insight, laws, loop, quiz, roadmap, runs
from derisk.cli._output import emit, report, state
from derisk.errors import DeriskError, Problem

# Options of the app itself, accepted anywhere on the line: `derisk --debug plan x.yaml`
# and `derisk plan x.yaml --debug` mean the same. (name -> takes a value)
GLOBAL_OPTIONS = {"--debug": False, "--store": True}


# Options whose value may be left out, and what it then is: `derisk sweep spec.yaml --ray`
# means a local Ray cluster (click has no options with an optional value).
OPTIONAL_VALUES = {"--ray": "local"}


def _is_value(arg: str) -> bool:
    """Could `arg` be an option's value (not a flag, not a spec file)?"""
    return not arg.startswith("-") and not arg.endswith((".yaml", ".yml", ".json"))


def hoist_global_options(args: list[str]) -> list[str]:
    """Move the app's own options in front of the subcommand (not past a `--`), and give
    an option of OPTIONAL_VALUES left without its value that default."""
    args = list(args)
    end = args.index("--") if "--" in args else len(args)  # nothing past `--` is an option
    for i in range(end - 1, -1, -1):
        valued = i + 1 < end and _is_value(args[i + 1])
        if args[i] in OPTIONAL_VALUES and not valued:
            args.insert(i + 1, OPTIONAL_VALUES[args[i]])
    front, rest = [], []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            rest += args[i:]
            break
        name = a.split("=", 1)[0]
        if name in GLOBAL_OPTIONS:
            takes_value = GLOBAL_OPTIONS[name] and "=" not in a
            if takes_value and i + 1 < len(args):
                front += args[i : i + 2]
                i += 2
                continue
            front.append(a)
        else:
            rest.append(a)
        i += 1
    return front + rest


class _Group(TyperGroup):
    """The app's group: global options may follow the subcommand."""

    def parse_args(self, ctx, args):
        return super().parse_args(ctx, hoist_global_options(list(args)))


app = typer.Typer(
    cls=_Group,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Plan research roadmaps: the next experiment, by exact value iteration under a "
    "compute budget. --debug and --store may also follow the command.",
)


def _version(value: bool) -> None:
    if value:
        import warnings

        from derisk import __version__
        from derisk.planner import _native

        with warnings.catch_warnings(record=True):  # a stale build: said below
            built = _native.available()
        loops = (
            "C"
            if built
            else "numpy (the C loops were not built, or are stale: reinstall with a C "
            "compiler for 3-6x faster solves)"
        )
        typer.echo(f"derisk {__version__}\nexact solver and policy evaluation loops: {loops}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks for errors (anywhere on the line).")
    ] = False,
    store: Annotated[
        Path | None,
        typer.Option(
            "--store",
            envvar="DERISK_STORE",
            help="Run store (SQLite) for train, sweep, runs and predict --run.",
        ),
    ] = None,
    version: Annotated[
        bool | None,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = None,
):
    state["debug"] = debug
    state["store"] = store


for _module in (roadmap, insight, laws, runs, loop, quiz):
    for _name, _fn in _module.COMMANDS:
        app.command(name=_name)(_fn)


def main() -> None:
    try:
        app()
    except DeriskError as exc:  # re-raised by --debug, or from outside a command body
        if state["debug"]:
            raise
        report(exc)
        sys.exit(2)
    except BrokenPipeError:  # `derisk plan | head -2`: the reader has all it wanted
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)


__all__ = ["GLOBAL_OPTIONS", "Problem", "app", "emit", "hoist_global_options", "main"]
