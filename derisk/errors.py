"""One exception hierarchy and one warning class for the whole package.

The CLI turns any `DeriskError` into one red line per problem and exit code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from dataclasses import dataclass


class DeriskError(Exception):
    """Base class for every error caused by user input."""


class DeriskWarning(UserWarning):
    """Legal but suspicious input: shown on stderr, never fatal."""


@dataclass(frozen=True)
class Problem:
    """One problem found in an input file, with its position (1-based)."""

    file: str
    line: int | None
    col: int | None
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.col is not None:
                where += f":{self.col}"
        return f"{where}: {self.message}"


class RoadmapError(DeriskError):
    """A roadmap file is malformed; `problems` lists every problem found."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class SolverError(DeriskError):
    """A solve cannot be done as asked (too large, unknown solver, ...)."""


class ProblemTooLarge(SolverError):
    """The MDP would not fit in the configured state or memory limit."""

    def __init__(self, message: str, *, states: int, levels: int, bytes_needed: int):
        self.states = states
        self.levels = levels
        self.bytes_needed = bytes_needed
        super().__init__(message)


class DataError(DeriskError):
    """Training-run data (a CSV or a run store) cannot be fitted as given."""


class StateFileError(DeriskError):
    """A recorded-outcomes state file is corrupt or does not match its roadmap."""
