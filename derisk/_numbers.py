"""The one way derisk prints a number, shared by the command line, explanations and reports."""

from __future__ import annotations

import math

# |x| below this is float noise when x is a derived sum or difference (a regret, a value of
# information, a posterior that should be exactly 0 or 1): sums of equal paths differ by
# ~1e-15 of their size, and every value derisk sums is far above 1e-9 of its unit.
NOISE = 1e-9


def fmt(x: float | None, unit: str = "", *, p: bool = False, derived: bool = False) -> str:
    """The one way numbers are printed.

    - probabilities (`p=True`): three decimals, `0.412`; a p that would round to 0 or 1
      without being exactly 0 or 1 prints as `<0.001` or `>0.999`, never as certainty;
    - 100 <= |x| < 1e9: whole numbers with thousands separators, `50,000`, `9,910`;
    - 1e-3 <= |x| < 100: four significant digits, `12.35`, `0.0413`;
    - |x| >= 1e9 or 0 < |x| < 1e-3: scientific with three digits, `3.2e21`, `4.5e-5`,
      `2e-13`: a nonzero number never prints as 0;
    - None, NaN and inf: `-`. The unit label, if any, follows after a space.

    `derived=True` is for a number computed as a sum or difference of others (a regret,
    an expected value, a posterior p): within `NOISE` of 0 (of 0 or 1 for a p) it is float
    noise and prints as exactly 0 (or 1). Inputs (a price, a law's p) never pass it.

    >>> fmt(50_000, "GPU-h"), fmt(3.2e21, "FLOP"), fmt(0.41234, p=True), fmt(2e-13)
    ('50,000 GPU-h', '3.2e21 FLOP', '0.412', '2e-13')
    >>> fmt(0.9999977, p=True), fmt(3e-7, p=True), fmt(1 - 1e-16, p=True, derived=True)
    ('>0.999', '<0.001', '1.000')
    """
    if x is None:
        return "-"
    x = float(x)
    if not math.isfinite(x):
        return "-"
    if p:
        return _p_text(x, derived)
    if derived and abs(x) < NOISE:
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


def _p_text(x: float, derived: bool) -> str:
    """A probability to three decimals that never rounds to a certainty it is not."""
    if derived:  # a sum of probabilities: snap float noise onto 0 and 1
        if abs(x) < NOISE:
            x = 0.0
        elif abs(x - 1) < NOISE:
            x = 1.0
    s = f"{x:.3f}"
    if s == "0.000" and x > 0:
        return "<0.001"
    if s == "1.000" and x < 1:
        return ">0.999"
    return s


def _with_digits(x: float, extra: int) -> str:
    """`fmt`'s style with `extra` more digits than it shows."""
    ax = abs(x)
    if ax >= 1e9 or 0 < ax < 1e-3:
        mant, exp = f"{x:.{2 + extra}e}".split("e")
        return f"{mant.rstrip('0').rstrip('.')}e{int(exp)}"
    if ax >= 100:
        return f"{x:,.{extra}f}"
    return f"{x:.{4 + extra}g}"


def fmt_distinct(values, unit: str = "") -> list[str]:
    """`fmt` of each value, with more digits where neighbours that differ would print the
    same: a table of budgets must not show two rows with one label.

    >>> fmt_distinct([2.6371e13, 2.6429e13, 3e13], "FLOP")
    ['2.637e13 FLOP', '2.643e13 FLOP', '3e13 FLOP']
    """
    xs = [float(v) for v in values]
    extra = [0] * len(xs)
    labels = [fmt(x) for x in xs]
    changed = True
    while changed:  # each pass adds a digit where neighbours still collide
        changed = False
        for k in range(len(xs) - 1):
            if labels[k] == labels[k + 1] and xs[k] != xs[k + 1]:
                for j in (k, k + 1):
                    if extra[j] < 12:
                        extra[j] += 1
                        labels[j] = _with_digits(xs[j], extra[j])
                        changed = True
    return [f"{s} {unit}".strip() for s in labels]


def fmt_range(lo: float, hi: float, unit: str = "", *, sep: str = "-") -> str:
    """`lo-hi` in one notation: scientific for both ends when `fmt` would print either
    end in it, so a range never reads `500,000,000-2e9`.

    >>> fmt_range(5e8, 2e9, "FLOP"), fmt_range(200, 400, "USD")
    ('5e8-2e9 FLOP', '200-400 USD')
    """
    a, b = fmt(lo), fmt(hi)
    if ("e" in a) != ("e" in b):
        a, b = (_scientific(x) if x != 0 else "0" for x in (float(lo), float(hi)))
    return f"{a}{sep}{b} {unit}".strip()


def _scientific(x: float) -> str:
    mant, exp = f"{x:.2e}".split("e")
    return f"{mant.rstrip('0').rstrip('.')}e{int(exp)}"
