"""Everything the commands share about output: consoles, the JSON writer, the error choke
point, warnings, progress bars and the one number formatter.

Results go to stdout (JSON with --json, else rich text); progress, warnings and errors go
to stderr, so `--json` output always parses.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import warnings
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from derisk._numbers import fmt
from derisk.errors import DeriskError, DeriskWarning, RoadmapError


def _width(stream) -> int | None:
    """Terminals set their own width; piped or redirected output is not wrapped at 80
    columns (which would break ids and numbers), unless COLUMNS says otherwise."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return None if tty or "COLUMNS" in os.environ else 200


out = Console(highlight=False, emoji=False, width=_width(sys.stdout))
err = Console(stderr=True, highlight=False, emoji=False, width=_width(sys.stderr))

# Global options (set by the app's callback, wherever they were given on the line).
state: dict = {"debug": False, "store": None}

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]


# ---------------------------------------------------------------- JSON


def jsonable(x):
    """A JSON-ready copy: numpy scalars and arrays as Python values, NaN/inf as None."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.integer | np.bool_):
        return x.item()
    if isinstance(x, float | np.floating):
        x = float(x)
        return x if math.isfinite(x) else None
    return x


def emit(result: dict) -> None:
    """The one JSON writer: stdout, fixed settings, NaN/inf as null."""
    sys.stdout.write(json.dumps(jsonable(result), indent=2, allow_nan=False) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------- errors and warnings


MAX_ERROR_LINES = 50  # a file with 100,000 problems is fixed from the top, not read whole


def report(exc: DeriskError) -> None:
    """One red line per problem on stderr (text escaped: it may hold brackets), at most
    MAX_ERROR_LINES of them; `validate --json` lists every one."""
    lines = [str(p) for p in exc.problems] if isinstance(exc, RoadmapError) else [str(exc)]
    for line in lines[:MAX_ERROR_LINES]:
        err.print(f"[bold red]error:[/] {escape(line)}", soft_wrap=True, highlight=False)
    if len(lines) > MAX_ERROR_LINES:
        err.print(
            f"[bold red]error:[/] ... and {len(lines) - MAX_ERROR_LINES:,} more problems "
            "(`derisk validate FILE --json` lists them all)",
            soft_wrap=True,
            highlight=False,
        )


def warn(message) -> None:
    err.print(f"[yellow]warning:[/] {escape(str(message))}", soft_wrap=True, highlight=False)


def command(fn):
    """Run a command body: DeriskWarnings to stderr (also with --json), user errors as red
    lines and exit 2 (--debug re-raises them with their traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DeriskWarning)
            try:
                return fn(*args, **kwargs)
            except DeriskError as exc:
                if state["debug"]:
                    raise
                report(exc)
                raise typer.Exit(2) from None
            finally:
                seen = set()
                for w in caught:
                    if issubclass(w.category, DeriskWarning) and str(w.message) not in seen:
                        seen.add(str(w.message))
                        warn(w.message)

    return wrapper


# ---------------------------------------------------------------- progress and charts


def progress(counter: str = "{task.completed:,}/{task.total:,} states") -> Progress:
    """A transient progress bar on stderr (off when stderr is not a terminal)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn(counter),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )


def print_chart(plt) -> None:
    """A plotext figure to stdout, plain when stdout is not a colour terminal."""
    plt.plotsize(min(100, out.width), 20)
    text = plt.build()
    if not out.is_terminal or out.no_color:
        text = plt.uncolorize(text)
    # Straight to stdout: rich would re-wrap the chart's lines.
    out.file.write(text + "\n")
    out.file.flush()


__all__ = ["fmt"]  # re-exported: the number formatter lives in derisk._numbers
