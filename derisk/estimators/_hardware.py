"""Accelerators: peak dense bf16 throughput, from each vendor's own datasheet.

Peak is the dense (no structured sparsity) bf16 tensor-core rate of one chip, the number
model FLOPs utilisation (MFU) is measured against. GPU-hours of a run are
FLOPs / (peak x MFU x 3600); "GPU" means one chip of the table (a TPU chip too).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Accelerator:
    name: str
    peak_flops: float  # dense bf16 FLOP/s of one chip
    source: str


ACCELERATORS = {
    a.name: a
    for a in (
        Accelerator(
            name="a100",
            peak_flops=312e12,
            source="NVIDIA A100 Tensor Core GPU datasheet: BF16 tensor core 312 TFLOPS "
            "(624 with sparsity), SXM",
        ),
        Accelerator(
            name="h100",
            peak_flops=989e12,
            source="NVIDIA H100 Tensor Core GPU datasheet: BF16 tensor core 1,979 TFLOPS "
            "with sparsity, SXM (989 dense)",
        ),
        Accelerator(
            name="h200",
            peak_flops=989e12,
            source="NVIDIA H200 Tensor Core GPU datasheet: BF16 tensor core 1,979 TFLOPS "
            "with sparsity, SXM (989 dense)",
        ),
        Accelerator(
            name="b200",
            peak_flops=2.25e15,
            source="NVIDIA HGX B200 datasheet: FP16/BF16 tensor core 4.5 PFLOPS with "
            "sparsity per GPU (2.25 dense)",
        ),
        Accelerator(
            name="mi300x",
            peak_flops=1307.4e12,
            source="AMD Instinct MI300X datasheet: peak BF16 1307.4 TFLOPS dense "
            "(2614.9 with sparsity)",
        ),
        Accelerator(
            name="tpu-v5e",
            peak_flops=197e12,
            source="Google Cloud TPU v5e documentation: 197 TFLOPS bf16 per chip",
        ),
        Accelerator(
            name="tpu-v5p",
            peak_flops=459e12,
            source="Google Cloud TPU v5p documentation: 459 TFLOPS bf16 per chip",
        ),
        Accelerator(
            name="tpu-v6e",
            peak_flops=918e12,
            source="Google Cloud TPU v6e (Trillium) documentation: 918 TFLOPS bf16 per chip",
        ),
    )
}


def accelerator(name: str) -> Accelerator:
    """An accelerator by name (case and `_`/`-`/space insensitive: `H100`, `tpu_v5e`).

    Raises KeyError naming the known ones.
    """
    key = "-".join(str(name).lower().replace("_", " ").replace("-", " ").split())
    key = {"tpu-v5-e": "tpu-v5e", "v5e": "tpu-v5e", "v5p": "tpu-v5p", "v6e": "tpu-v6e"}.get(
        key, key
    )
    if key not in ACCELERATORS:
        raise KeyError(f"unknown hardware {name!r}; known: {', '.join(ACCELERATORS)}")
    return ACCELERATORS[key]


def gpu_hours(flops: float, peak_flops: float, mfu: float) -> float:
    """Chip-hours to do `flops` at `mfu` of `peak_flops`: FLOPs / (peak x MFU x 3600)."""
    return flops / (peak_flops * mfu * 3600.0)
