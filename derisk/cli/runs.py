"""Training and run-store commands: train, sweep, runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from derisk.cli._output import JsonOpt, command, emit, err, fmt, out, progress, state
from derisk.errors import DeriskError


def open_store(*, create: bool):
    """The run store of --store (or $DERISK_STORE, else the default location).

    Reading (`create=False`) never creates a store: a missing one is an error naming it.
    """
    from derisk.estimators import RunStore, default_store

    return RunStore(state.get("store") or default_store(), create=create)


def _check_fits(model, tc) -> None:
    """Refuse a run whose estimated memory exceeds this machine's (or the GPU's)."""
    import os

    import jax

    from derisk.estimators import training_bytes

    need = training_bytes(model, tc)
    try:
        have = jax.devices()[0].memory_stats()["bytes_limit"]
    except (AttributeError, KeyError, TypeError, RuntimeError):
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > 0.8 * have:
        raise DeriskError(
            f"a {model.arch} model with d_model {model.d_model}, {model.n_layer} layers and "
            f"batch {tc.batch_size} x {model.seq_len} needs ~{need / 2**30:.1f} GiB to train, "
            f"more than this device's {have / 2**30:.1f} GiB; use a smaller --d-model, "
            "--n-layer, --batch-size or --seq-len"
        )


def _run_one(store, model, tc, corpus, *, label: str = ""):
    """Train one point with a live progress bar and record it; returns (key, id, result)."""
    from derisk.estimators import run_key, train

    _check_fits(model, tc)
    key = run_key(model, tc, corpus.digest)
    store.start(key, model, tc, corpus)
    with progress("loss {task.fields[loss]:.3f}  {task.fields[rate]:,.0f} tok/s") as bar:
        task = bar.add_task(label or f"{model.arch} d{model.d_model}", total=1, loss=0.0, rate=0.0)

        def report(i, n, loss, rate):
            bar.update(task, completed=i, total=n, loss=loss, rate=rate)

        result = train(model, tc, corpus, progress=report)
    store.finish(key, result)
    return key, store.id_of(key), result


@command
def train_cmd(
    arch: Annotated[str, typer.Option("--arch", help="dense | moe")] = "dense",
    d_model: Annotated[int, typer.Option("--d-model")] = 64,
    n_layer: Annotated[int, typer.Option("--n-layer")] = 2,
    n_head: Annotated[int, typer.Option("--n-head")] = 2,
    seq_len: Annotated[int, typer.Option("--seq-len")] = 64,
    experts: Annotated[int, typer.Option("--experts")] = 4,
    top_k: Annotated[int, typer.Option("--top-k")] = 1,
    granularity: Annotated[int, typer.Option("--granularity")] = 1,
    tokens: Annotated[float, typer.Option("--tokens", help="Training tokens (bytes).")] = 1e6,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 16,
    lr: Annotated[
        float | None,
        typer.Option(
            "--lr", help="Peak learning rate (default 0.096 / d_model, as the shipped sweep)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    corpus: Annotated[
        Path | None,
        typer.Option("--corpus", help="Text file or folder (default: the Python stdlib sources)."),
    ] = None,
    max_bytes: Annotated[
        int | None, typer.Option("--max-bytes", help="Cap the corpus.")
    ] = 20_000_000,
    as_json: JsonOpt = False,
):
    """Train one small dense or MoE language model and record it in the run store.

    The defaults are the shipped sweep's setting, so the shipped laws (`derisk predict
    --law cpu-dense --run ID`) apply to a run that only changes --d-model and --tokens.
    """
    from derisk.estimators import ModelConfig, TrainConfig, load_corpus, lr_for_width

    try:
        model = ModelConfig(
            arch=arch,
            d_model=d_model,
            n_layer=n_layer,
            n_head=n_head,
            seq_len=seq_len,
            experts=experts,
            top_k=top_k,
            granularity=granularity,
        )
        if lr is None:  # the model above has a valid width (d_model >= 8)
            lr = lr_for_width(d_model)
        tc = TrainConfig(tokens=int(tokens), batch_size=batch_size, lr=lr, seed=seed)
    except ValueError as exc:
        raise DeriskError(f"bad training config: {exc}") from None
    data = load_corpus(corpus, max_bytes=max_bytes)
    store = open_store(create=True)
    key, run_id, r = _run_one(store, model, tc, data)
    if as_json:
        emit({"id": run_id, "key": key, "store": str(store.path), **r.as_dict()})
        return
    out.print(
        f"run {run_id} {escape(r.status)}: {model.arch} with "
        f"{fmt(r.params['non_embedding'])} non-embedding params "
        f"({fmt(r.params['non_embedding_active'])} active), {fmt(r.tokens)} tokens, "
        f"validation loss {r.final_val_loss:.4f} nats/byte, {fmt(r.tokens_per_s)} "
        f"tokens/s on {escape(str(r.device))}; saved to {escape(str(store.path))} "
        f"(`derisk predict --run {run_id}` compares it with a law)"
    )


@command
def sweep(
    spec: Annotated[Path, typer.Argument(help="Sweep spec YAML: lists are grid axes.")],
    as_json: JsonOpt = False,
):
    """Run a grid of trainings; resumable (finished points are skipped)."""
    from derisk.estimators import load_corpus, load_sweep, run_key, sweep_points

    raw = load_sweep(spec)
    points, capped = sweep_points(raw, str(spec))
    for model, tc in points:
        _check_fits(model, tc)
    data = load_corpus(raw.get("corpus"), max_bytes=raw.get("max_bytes", 20_000_000))
    store = open_store(create=True)
    done = ran = 0
    results, skipped = [], []
    for i, (model, tc) in enumerate(points):
        key = run_key(model, tc, data.digest)
        if store.status(key) == "finished":
            done += 1
            skipped.append(store.id_of(key))
            continue
        label = f"[{i + 1}/{len(points)}] {model.arch} d{model.d_model} {tc.tokens:,} tok"
        _, run_id, r = _run_one(store, model, tc, data, label=label)
        ran += 1
        results.append({"id": run_id, "key": key, "status": r.status, "val_loss": r.final_val_loss})
        if not as_json:
            err.print(f"{escape(label)}: run {run_id} {r.status}, val loss {r.final_val_loss:.4f}")
    summary = {
        "points": len(points),
        "skipped_finished": done,
        "skipped_ids": skipped,
        "ran": ran,
        "over_compute_cap": capped,
        "store": str(store.path),
        "ids": [r["id"] for r in results],
        "results": results,
    }
    if as_json:
        emit(summary)
        return
    ids = ", ".join(str(r["id"]) for r in results)
    out.print(
        f"{len(points)} points: {done} already finished, {ran} run"
        + (f" (ids {ids})" if ids else "")
        + (f", {capped} beyond max_flops" if capped else "")
        + f"; store {escape(str(store.path))}"
    )


@command
def runs(
    csv_out: Annotated[
        Path | None,
        typer.Option("--csv", help="Export finished runs as the CSV `derisk fit` reads."),
    ] = None,
    arch: Annotated[str | None, typer.Option("--arch", help="Only dense or moe runs.")] = None,
    as_json: JsonOpt = False,
):
    """List the runs in the store (or export them for fitting). Creates nothing."""
    from derisk.estimators import default_store
    from derisk.graphs import write_atomic

    path = Path(state.get("store") or default_store())
    if state.get("store") is None and not path.exists():
        # the default store before any training: an empty listing that says why
        note = f"no run store at {path} yet (train or sweep first)"
        if csv_out is not None:
            raise DeriskError(f"--csv: nothing to export: {note}")
        if as_json:
            emit({"store": str(path), "exists": False, "note": note, "runs": []})
        else:
            out.print(escape(note))
        return
    store = open_store(create=False)
    rows = [r for r in store.runs() if not arch or r["arch"] == arch]
    if csv_out is not None:
        try:
            write_atomic(csv_out, store.export_csv(arch=arch))
        except OSError as exc:
            raise DeriskError(f"--csv: cannot write {csv_out}: {exc.strerror or exc}") from None
    if as_json:
        emit(
            {
                "store": str(store.path),
                "exists": True,
                "runs": [
                    {
                        "id": r["id"],
                        "arch": r["arch"],
                        "params": r["non_embedding"],
                        "total_params": r["params"],
                        "active_params": r["active_params"],
                        "experts": r["experts"],
                        "tokens": r["tokens"],
                        "val_loss": r["val_loss"],
                        "best_val_loss": r["best_val_loss"],
                        "flops": r["flops"],
                        "wall_s": r["wall_s"],
                        "tokens_per_s": r["tokens_per_s"],
                        "mfu": r["mfu"],
                        "device": r["device"],
                        "corpus_hash": r["corpus_hash"],
                        "status": r["status"],
                    }
                    for r in rows
                ],
            }
        )
        return
    t = Table(title=escape(str(store.path)), title_justify="left")
    for col in ("id", "arch", "params", "tokens", "val loss", "tok/s", "status"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(
            str(r["id"]),
            r["arch"],
            fmt(r["non_embedding"]),
            fmt(r["tokens"]),
            f"{r['val_loss']:.4f}" if r["val_loss"] is not None else "-",
            fmt(r["tokens_per_s"]) if r["tokens_per_s"] else "-",
            escape(r["status"]),
        )
    out.print(t)
    if not rows:
        out.print("the store holds no runs" + (f" of arch {escape(arch)}" if arch else ""))
    if csv_out is not None:
        out.print(f"exported finished runs to {escape(str(csv_out))}")


COMMANDS = [("train", train_cmd), ("sweep", sweep), ("runs", runs)]
