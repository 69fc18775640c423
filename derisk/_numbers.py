"""The one way derisk prints a number, shared by the command line, explanations and reports."""

from __future__ import annotations

import math


def fmt(x: float | None, unit: str = "", *, p: bool = False) -> str:
    """The one way numbers are printed.

    - probabilities (`p=True`): three decimals, `0.412`;
    - 100 <= |x| < 1e9: whole numbers with thousands separators, `50,000`, `9,910`;
    - 1e-3 <= |x| < 100: four significant digits, `12.35`, `0.0413`;
    - |x| >= 1e9 or 0 < |x| < 1e-3: scientific with three digits, `3.2e21`, `4.5e-5`;
    - None, NaN and inf: `-`. The unit label, if any, follows after a space.

    >>> fmt(50_000, "GPU-h"), fmt(3.2e21, "FLOP"), fmt(0.41234, p=True)
    ('50,000 GPU-h', '3.2e21 FLOP', '0.412')
    """
    if x is None:
        return "-"
    x = float(x)
    if not math.isfinite(x):
        return "-"
    if p:
        return f"{x:.3f}"
    if abs(x) < 1e-9:  # float noise from sums of equal paths
        x = 0.0
    ax = abs(x)
    if ax == 0:
        s = "0"
    elif ax >= 1e9 or ax < 1e-3:
        mant, exp = f"{x:.2e}".split("e")
        s = f"{mant.rstrip('0').rstrip('.')}e{int(exp)}"
    elif ax >= 100:
        s = f"{x:,.0f}"
    else:
        s = f"{x:.4g}"
    return f"{s} {unit}".strip()
