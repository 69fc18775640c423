"""Roadmaps: the file format, validation with precise errors, the DAG, generators."""

from importlib import resources
from pathlib import Path

from derisk.graphs._edit import (
    load_state,
    load_with_overrides,
    record_outcomes,
    state_path,
    write_atomic,
)
from derisk.graphs._generate import random_roadmap
from derisk.graphs._load import load_roadmap, roadmap_from_dict, suspicious
from derisk.graphs._model import (
    MAX_AUTO_LEVELS,
    MAX_LEVELS,
    Categorical,
    ComputeDefaults,
    Conditional,
    Cost,
    Experiment,
    ResolutionChoice,
    Roadmap,
    SuccessSpec,
    TrainSpec,
    choose_resolution,
    describe_p,
)

__all__ = [
    "MAX_AUTO_LEVELS",
    "MAX_LEVELS",
    "Categorical",
    "ComputeDefaults",
    "Conditional",
    "Cost",
    "Experiment",
    "ResolutionChoice",
    "Roadmap",
    "SuccessSpec",
    "TrainSpec",
    "choose_resolution",
    "describe_p",
    "example_path",
    "examples",
    "load_roadmap",
    "load_state",
    "load_with_overrides",
    "record_outcomes",
    "state_path",
    "write_atomic",
    "random_roadmap",
    "roadmap_from_dict",
    "suspicious",
]

DEFAULT_EXAMPLE = "moe-at-scale"


def examples() -> dict[str, Path]:
    """Bundled example roadmaps, name -> path."""
    folder = Path(str(resources.files("derisk.graphs") / "examples"))
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def example_path(name: str = DEFAULT_EXAMPLE) -> Path:
    """Path of a bundled example; `KeyError` lists the known names."""
    found = examples()
    if name not in found:
        raise KeyError(f"no example `{name}`; known: {', '.join(found)}")
    return found[name]
