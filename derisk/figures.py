"""Matplotlib figures of derisk results, saved to a file (PNG, SVG, PDF by extension).

Each function takes result objects and a path, draws off-screen (Agg) and raises
`DeriskError` when the path cannot be written. Nothing here prints: the command line
and the report writer decide what to say about the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from derisk.errors import DeriskError

__all__ = ["fit_figure", "goal_of", "whatif_figure"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # off-screen: works without a display, in threads and over ssh
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    """Write a figure (format from the extension); a bad path is the user's error."""
    plt = _pyplot()
    path = Path(path)
    if not path.suffix:  # matplotlib would add .png itself; say the name it gets
        path = path.with_name(path.name + ".png")
    try:
        fig.savefig(path, dpi=150)
    except (OSError, ValueError) as exc:
        raise DeriskError(
            f"cannot write {path}: {getattr(exc, 'strerror', None) or exc} (give a writable "
            "path ending in .png, .svg or .pdf)"
        ) from None
    finally:
        plt.close(fig)
    return path


def goal_of(w, roadmap) -> str | None:
    """The rewarded experiment a what-if curve is about: the one with the largest reward."""
    if not w.p_reward:
        return None
    return max(w.p_reward, key=lambda k: roadmap.experiment(k).reward)


def _spans(w) -> list[tuple[float, float, str]]:
    """(start, end, first experiment) for each budget range with one recommendation."""
    starts = [0, *w.changes]
    ends = [*w.changes, len(w.budgets)]
    out = []
    for a, b in zip(starts, ends, strict=True):
        lo = float(w.budgets[a])
        hi = float(w.budgets[b]) if b < len(w.budgets) else float(w.budgets[-1])
        out.append((lo, hi, w.first[a] or "stop"))
    return out


def whatif_figure(
    w, roadmap, path: str | Path, *, budget: float | None = None, left: bool = False
) -> Path:
    """Value and P(goal) against budget, each budget range labelled with its best first
    experiment, and the roadmap's budget marked.

    Args:
        w: a `derisk.planner.WhatIf` (from `whatif_report`).
        roadmap: the `Roadmap` it was solved from (name, unit, rewards).
        path: where to write the figure; the extension picks the format.
        budget: the budget to mark (default: the roadmap's); None marks nothing when it
            lies outside the curve.

    Returns the path written.
    """
    plt = _pyplot()
    unit = roadmap.unit_label()
    budgets = np.asarray(w.budgets, dtype=float)
    mark = roadmap.budget if budget is None else budget
    goal = goal_of(w, roadmap)

    fig, ax = plt.subplots(figsize=(10, 4.8))
    # shaded spans: one per recommended first experiment, labelled at the top
    colours = {}
    palette = plt.get_cmap("Pastel1").colors
    for lo, hi, first in _spans(w):
        colour = colours.setdefault(first, palette[len(colours) % len(palette)])
        ax.axvspan(lo, hi, color=colour, alpha=0.45, lw=0)
    lines = [ax.plot(budgets, w.value, color="C0", lw=2, label="expected value")[0]]
    what = "budget left" if left else "budget"  # after recorded outcomes: what is left
    ax.set_xlabel(f"{what} ({unit})" if unit else what)
    ax.set_ylabel("expected value")
    span = budgets[-1] - budgets[0] if budgets[-1] > budgets[0] else 1.0
    ax.set_xlim(budgets[0], budgets[0] + span * 1.02)  # room for a budget line at the end
    ax.grid(alpha=0.3)
    if budgets[-1] < 1e9:
        from matplotlib.ticker import StrMethodFormatter

        ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    if goal:
        ax2 = ax.twinx()
        lines.append(
            ax2.plot(budgets, w.p_reward[goal], color="C1", lw=1.5, ls="--", label=f"P({goal})")[0]
        )
        ax2.set_ylabel(f"P({goal} succeeds)")
        ax2.set_ylim(0, 1.12)  # headroom for the span labels
    top = ax.get_ylim()
    ax.set_ylim(top[0], top[1] + 0.12 * (top[1] - top[0]))
    width = span
    for lo, hi, first in _spans(w):
        if (hi - lo) / width < 0.06 and len(w.changes) > 1:
            continue  # too narrow to label legibly; the legend still names it
        ax.text(
            (lo + hi) / 2,
            0.985,
            f"first: {first}",
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="top",
            fontsize=8,
            rotation=0 if (hi - lo) / width > 0.18 else 90,
        )
    if mark is not None and budgets[0] <= mark <= budgets[-1]:
        label = f"budget ({_short(mark)}{' ' + unit if unit else ''})"
        lines.append(ax.axvline(mark, color="k", lw=1.5, ls="--", label=label))
        ax.text(
            mark,
            0.75,
            "budget ",
            transform=ax.get_xaxis_transform(),
            rotation=90,
            ha="right",
            va="center",
            fontsize=9,
        )
    from matplotlib.patches import Patch

    lines += [
        Patch(color=c, alpha=0.45, label=f"best first: {first}") for first, c in colours.items()
    ]
    # outside the axes, on the right: the curves and span labels stay readable
    ax.legend(handles=lines, loc="upper left", bbox_to_anchor=(1.1, 1.0), fontsize=8)
    ax.set_title(f"{roadmap.name}: value against budget")
    fig.tight_layout()
    return _save(fig, path)


def _short(x: float) -> str:
    return f"{x:,.0f}" if 1 <= abs(x) < 1e9 else f"{x:.3g}"


def _backtest_panel(ax, backtest: dict, calibration: dict | None) -> None:
    """Each backtest row's log error against the decades it was extrapolated, by axis,
    with the central 80% spread the calibration adds (+-1.28 k d) where there is one."""
    for i, by in enumerate(("compute", "params")):
        rows = [r for r in backtest["rows"] if r["by"] == by]
        if not rows:
            continue
        d = np.array([r["decades"] for r in rows])
        e = np.array([r["log_error"] for r in rows])
        inside = np.array([r["inside"] for r in rows])
        ax.scatter(
            d[inside], e[inside], s=12, color=f"C{i}", marker="o", label=f"by {by}, inside band"
        )
        ax.scatter(
            d[~inside], e[~inside], s=16, color=f"C{i}", marker="x", label=f"by {by}, outside"
        )
        term = ((calibration or {}).get("axes") or {}).get(by)
        if term:
            z = 1.2816  # the normal's 90% point: a central 80% band
            x = np.linspace(0, max(float(d.max()), 1e-9), 50)
            for sign in (1, -1):
                ax.plot(
                    x,
                    sign * z * term["per_decade"] * x,
                    color=f"C{i}",
                    lw=1,
                    ls="--",
                    label=f"calibrated 80%, {by}" if sign == 1 else None,
                )
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_xlabel("decades beyond the largest fitted run")
    ax.set_ylabel("log(observed / predicted)")
    ax.set_title("backtest: held-out larger runs")
    ax.legend(fontsize=7)


def fit_figure(fit, data, path: str | Path, *, upto: float = 10.0) -> Path:
    """A scaling-law fit: the runs' loss against training compute 6ND (log axes), and for
    a dense law the compute-optimal loss with its 80% predictive band, extended to `upto`
    times the largest run; for an MoE law, the fit at each run. A fit with a backtest gets
    a second panel: the held-out runs' log errors against decades extrapolated.

    Args:
        fit: a `derisk.scaling.FitResult`.
        data: the `RunData` it was fitted to.
        path: where to write the figure.
    """
    from derisk.scaling import law_inputs, loss_frontier

    plt = _pyplot()
    if fit.backtest:
        fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.5))
        _backtest_panel(bx, fit.backtest, fit.calibration)
    else:
        fig, ax = plt.subplots(figsize=(7, 4.5))
    flops = 6 * data.params * data.tokens
    sc = ax.scatter(flops, data.loss, c=np.log10(data.params), s=14, cmap="viridis", label="runs")
    fig.colorbar(sc, ax=ax, label="log10 params")
    if fit.law == "chinchilla":
        f = loss_frontier(fit, float(flops.min()), float(flops.max()) * upto)
        ax.plot(f.flops, f.loss, color="C3", label="compute-optimal fit")
        band = "80% predictive band" + (" (calibrated)" if fit.calibration else "")
        ax.fill_between(f.flops, f.lo, f.hi, color="C3", alpha=0.2, label=band)
        ax.axvline(flops.max(), color="grey", ls=":", lw=0.8, label="largest run")
    else:
        X = law_inputs(fit.law, data.params, data.tokens, data.experts, data.granularity)
        ax.scatter(flops, fit.predict(X), marker="x", color="C3", s=14, label="fit")
    ax.set_xscale("log")
    ax.set_yscale("log")
    from matplotlib.ticker import FormatStrFormatter

    for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        axis(FormatStrFormatter("%g"))  # 2.5, not 2.5x10^0
    ax.set_xlabel("training FLOPs (6ND)")
    ax.set_ylabel("loss")
    ax.set_title(f"{fit.law} fit, {fit.n} runs")
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)
