"""Where derisk keeps user data (run store, fitted laws)."""

from __future__ import annotations

import os
from pathlib import Path


def data_path(env: str, name: str) -> Path:
    """$env if set, else $XDG_DATA_HOME/derisk/name (default ~/.local/share/derisk/name)."""
    override = os.environ.get(env)
    if override:
        return Path(override)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "derisk" / name
