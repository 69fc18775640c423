"""Pallas kernels for the MoE feed-forward, each beside its plain-JAX reference."""

from derisk.kernels._gmm import (
    IMPLS,
    TOLERANCE,
    Tiling,
    gmm,
    gmm_reference,
    gmm_swiglu,
    gmm_swiglu_reference,
    tgmm,
    tgmm_reference,
)
from derisk.kernels._metadata import group_offsets, num_visits, visit_metadata
from derisk.kernels._moe import (
    combine,
    combine_rows,
    moe_ffn,
    moe_ffn_reference,
    round_groups,
    route_top_k,
    sort_by_expert,
)

__all__ = [
    "IMPLS",
    "TOLERANCE",
    "Tiling",
    "combine",
    "combine_rows",
    "gmm",
    "gmm_reference",
    "gmm_swiglu",
    "gmm_swiglu_reference",
    "group_offsets",
    "moe_ffn",
    "moe_ffn_reference",
    "num_visits",
    "round_groups",
    "route_top_k",
    "sort_by_expert",
    "tgmm",
    "tgmm_reference",
    "visit_metadata",
]
