"""Byte-level training data that needs no download.

The default corpus is the Python standard library's own source files: a fixed, sorted
list of .py files, split into train and validation *by file* (every 10th file by a hash
of its relative path goes to validation), hashed so every run records exactly what it
trained on. Any text file or folder the user names can be used instead.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from derisk.errors import DataError


@dataclass(frozen=True, eq=False)
class Corpus:
    train: np.ndarray  # uint8 bytes
    valid: np.ndarray
    digest: str  # sha256 over (relative path, content) of every file, in order
    source: str
    files: int


def _files(root: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if root.is_file():
        return [root]
    skip = ("site-packages", "test", "tests", "idlelib", "__pycache__")
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix in suffixes
        and not any(part in skip for part in p.relative_to(root).parts)
    )


def load_corpus(
    path: str | Path | None = None,
    *,
    max_bytes: int | None = None,
    suffixes: tuple[str, ...] = (".py", ".txt", ".md", ".rst"),
) -> Corpus:
    """Read a corpus: the stdlib sources by default, else a file or a folder.

    `max_bytes` caps the corpus (files are taken in sorted order until it is reached).
    """
    if path is None:
        root = Path(sysconfig.get_paths()["stdlib"])
        suffixes = (".py",)
    else:
        root = Path(path)
        if not root.exists():
            raise DataError(f"corpus {root}: no such file or folder")
    files = _files(root, suffixes)
    if not files:
        raise DataError(f"corpus {root}: no {'/'.join(suffixes)} files found")
    h = hashlib.sha256()
    train, valid, total = [], [], 0
    for f in files:
        rel = str(f.relative_to(root)) if f != root else f.name
        try:
            data = f.read_bytes()
        except OSError:
            continue
        h.update(rel.encode() + b"\0" + data)
        # Split by file, deterministically: whole files never leak across the split.
        bucket = int(hashlib.md5(rel.encode()).hexdigest(), 16) % 10
        (valid if bucket == 0 or len(files) == 1 else train).append(data)
        total += len(data)
        if max_bytes is not None and total >= max_bytes:
            break
    if len(files) == 1:  # one file: last 10% is validation
        data = valid.pop()
        cut = int(len(data) * 0.9)
        train, valid = [data[:cut]], [data[cut:]]
    tr = np.frombuffer(b"\n".join(train), dtype=np.uint8)
    va = np.frombuffer(b"\n".join(valid), dtype=np.uint8)
    if len(tr) < 1024 or len(va) < 256:
        raise DataError(
            f"corpus {root}: too small ({len(tr)} train / {len(va)} validation "
            "bytes); give more text"
        )
    return Corpus(train=tr, valid=va, digest=h.hexdigest()[:16], source=str(root), files=len(files))


def check_corpus(corpus: Corpus, model) -> None:
    """`DataError` unless both splits hold at least one training window (seq_len + 1
    bytes, and one to choose where it starts) for this model."""
    need = model.seq_len + 2
    for split, data in (("training", corpus.train), ("validation", corpus.valid)):
        if len(data) < need:
            raise DataError(
                f"corpus {corpus.source}: its {split} split has {len(data):,} bytes, fewer "
                f"than the {need:,} one window of seq_len {model.seq_len} needs; give more "
                "text (--corpus, --max-bytes) or a smaller --seq-len"
            )


def batch(data: np.ndarray, *, batch_size: int, seq_len: int, step: int, seed: int) -> np.ndarray:
    """(batch_size, seq_len + 1) int32 windows at offsets drawn from (seed, step).

    Deterministic: the same seed and step give the same batch, so a run is reproducible
    and a resumed run sees the same data it would have seen.
    """
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(data) - seq_len - 1, size=batch_size)
    idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
    return data[idx].astype(np.int32)
