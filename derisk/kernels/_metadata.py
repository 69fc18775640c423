"""Tile metadata for grouped matmuls, as pure jnp functions (tested on their own).

Rows are sorted by group and cut into tiles of `bm` rows. A *visit* is one
(tile, group) pair: a tile that a group boundary cuts is visited once per group that
touches it, and each visit owns only its rows [lo, hi). One pseudo-group (index E)
covers the rows [sum(group_sizes), M), which must come out as zeros. With T tiles there
are at most T + E visits (each of the E boundaries adds at most one), which is the
static grid size: the Triton backend has no dynamic grid, so unused visits have
lo == hi and return at once.
"""

from __future__ import annotations

import jax.numpy as jnp


def num_visits(m: int, bm: int, num_groups: int) -> int:
    """Static upper bound on visits: tiles + groups."""
    return -(-m // bm) + num_groups


def group_offsets(group_sizes: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(starts, ends) row offsets of each group, int32 (E,)."""
    ends = jnp.cumsum(group_sizes.astype(jnp.int32))
    return ends - group_sizes.astype(jnp.int32), ends


def visit_metadata(group_sizes: jnp.ndarray, m: int, bm: int) -> jnp.ndarray:
    """(4, V) int32 rows: tile index, group index (E = the zero pseudo-group), lo, hi.

    Visits are ordered by group, so programs that run together share weight tiles.

    >>> import jax.numpy as jnp
    >>> visit_metadata(jnp.array([3, 0, 5]), m=10, bm=4)[:, :5].tolist()
    [[0, 0, 1, 2, 0], [0, 2, 2, 3, 3], [0, 3, 4, 8, 0], [3, 4, 8, 10, 0]]
    """
    num_groups = group_sizes.shape[0]
    sizes = group_sizes.astype(jnp.int32)
    total = jnp.minimum(jnp.sum(sizes), m)
    starts, ends = group_offsets(sizes)
    # Rows past M are ignored (a caller error, but never an out-of-bounds write).
    starts, ends = jnp.minimum(starts, m), jnp.minimum(ends, m)
    starts = jnp.concatenate([starts, total[None]])
    ends = jnp.concatenate([ends, jnp.array([m], jnp.int32)])
    sizes = ends - starts
    first = starts // bm
    last = (ends - 1) // bm
    count = jnp.where(sizes > 0, last - first + 1, 0)
    offsets = jnp.cumsum(count)  # inclusive
    V = num_visits(m, bm, num_groups)
    v = jnp.arange(V, dtype=jnp.int32)
    group = jnp.searchsorted(offsets, v, side="right").astype(jnp.int32)
    valid = v < offsets[-1]
    group = jnp.minimum(group, num_groups)
    within = v - (offsets[group] - count[group])
    tile = jnp.where(valid, first[group] + within, 0)
    lo = jnp.where(valid, jnp.maximum(starts[group], tile * bm), 0)
    hi = jnp.where(valid, jnp.minimum(ends[group], (tile + 1) * bm), 0)
    return jnp.stack([tile, group, lo, hi]).astype(jnp.int32)
