"""Training and run-store commands: train, sweep, runs."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from derisk.cli._output import JsonOpt, command, emit, err, fmt, out, progress, state, warn
from derisk.errors import DeriskError


def open_store(*, create: bool):
    """The run store of --store (or $DERISK_STORE, else the default location).

    Reading (`create=False`) never creates a store: a missing one is an error naming it.
    """
    from derisk.estimators import RunStore, default_store

    return RunStore(state.get("store") or default_store(), create=create)


def _check_fits(model, tc) -> None:
    """Refuse a run whose estimated memory exceeds this machine's (or the GPU's)."""
    from derisk.estimators._ray import memory_shortfall

    why = memory_shortfall(model, tc)
    if why is not None:
        raise DeriskError(f"{why}; use a smaller --d-model, --n-layer, --batch-size or --seq-len")


def _stored_result(store, claim) -> dict:
    """A stored run in the shape of a fresh `RunResult` (for a point already done)."""
    from derisk.estimators import ModelConfig, param_counts

    run = store.get(claim.id)
    return {
        "status": run["status"],
        "final_val_loss": run["val_loss"],
        "best_val_loss": run["best_val_loss"],
        "curve": run["curve"],
        "tokens": run["tokens"],
        "flops": run["flops"],
        "wall_s": run["wall_s"],
        "tokens_per_s": run["tokens_per_s"],
        "mfu": run["mfu"],
        "device": run["device"],
        "params": param_counts(ModelConfig(**run["model"])),
    }


def _train_point(store, model, tc, corpus, *, label="", retrain=False, wait=True):
    """Claim one point in the store and train it with a live progress bar.

    Returns (claim, result): result is the `RunResult` when this process trained it, None
    when the point was already done (claim.state "done") or, without `wait`, is being
    trained by another live process ("busy"). With `wait`, a busy point is waited for,
    then reused (or retaken if its process died).
    """
    import time

    from derisk.estimators import run_key, train
    from derisk.estimators._store import HEARTBEAT_S

    key = run_key(model, tc, corpus.digest)
    delay, told = 0.5, False
    while True:
        claim = store.claim(key, model, tc, corpus, retrain=retrain)
        if claim.state != "busy" or not wait:
            break
        if not told:
            err.print(
                f"run {claim.id} is being trained by {escape(claim.describe_owner())}; "
                "waiting for it (Ctrl-C stops waiting; --no-wait returns at once)"
            )
            told = True
        retrain = False  # the other process's fresh run is what --retrain asked for
        time.sleep(delay)
        delay = min(5.0, delay * 1.5)
    if claim.state != "claimed":
        return claim, None
    if claim.previous:
        err.print(f"retaking run {claim.id} (it was {escape(claim.previous)})")
    beat = [time.monotonic()]
    try:
        with progress("loss {task.fields[loss]:.3f}  {task.fields[rate]:,.0f} tok/s") as bar:
            task = bar.add_task(
                label or f"{model.arch} d{model.d_model}", total=1, loss=0.0, rate=0.0
            )

            def report(i, n, loss, rate):
                bar.update(task, completed=i, total=n, loss=loss, rate=rate)
                if time.monotonic() - beat[0] > HEARTBEAT_S:  # "still alive", for other hosts
                    beat[0] = time.monotonic()
                    with contextlib.suppress(DeriskError):
                        store.heartbeat(key)

            result = train(model, tc, corpus, progress=report)
    except BaseException as exc:
        why = (
            "interrupted"
            if isinstance(exc, KeyboardInterrupt | SystemExit)
            else f"{type(exc).__name__}: {exc}"
        )
        with contextlib.suppress(DeriskError):
            store.fail(key, why[:2000])
        if isinstance(exc, MemoryError) or "RESOURCE_EXHAUSTED" in str(exc):
            raise DeriskError(
                f"run {claim.id} ran out of memory ({str(exc)[:200]}); it is marked failed; "
                "use a smaller --d-model, --batch-size or --seq-len"
            ) from None
        raise
    store.finish(key, result)
    return claim, result


def _flag(flag: str, field: str, value):
    """A numeric flag checked like the sweep key it sets; exit 2 naming the flag."""
    from derisk.estimators import check_value

    try:
        return check_value(field, value)
    except ValueError as exc:
        raise DeriskError(f"{flag} {exc}") from None


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
    retrain: Annotated[
        bool,
        typer.Option("--retrain", help="Train again a point the store already has (same id)."),
    ] = False,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait/--no-wait",
            help="When another process is training this very point: wait for it and report "
            "its run (default), or return at once saying so.",
        ),
    ] = True,
    as_json: JsonOpt = False,
):
    """Train one small dense or MoE language model and record it in the run store.

    The defaults are the shipped sweep's setting, so the shipped laws (`derisk predict
    --law cpu-dense --run ID`) apply to a run that only changes --d-model and --tokens.
    A point the store already has is reported, not trained again (--retrain to redo it).
    """
    from derisk.estimators import (
        ModelConfig,
        TrainConfig,
        check_corpus,
        load_corpus,
        lr_for_width,
        run_key,
    )

    for flag, field, value in (
        ("--d-model", "d_model", d_model),
        ("--n-layer", "n_layer", n_layer),
        ("--n-head", "n_head", n_head),
        ("--seq-len", "seq_len", seq_len),
        ("--experts", "experts", experts),
        ("--top-k", "top_k", top_k),
        ("--granularity", "granularity", granularity),
        ("--batch-size", "batch_size", batch_size),
        ("--seed", "seed", seed),
    ):
        _flag(flag, field, value)
    tokens = _flag("--tokens", "tokens", tokens)
    if lr is not None:
        lr = _flag("--lr", "lr", lr)
    if max_bytes is not None:
        max_bytes = _flag("--max-bytes", "max_bytes", max_bytes)
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
        tc = TrainConfig(tokens=tokens, batch_size=batch_size, lr=lr, seed=seed)
    except ValueError as exc:
        raise DeriskError(f"bad training config: {exc}") from None
    _check_fits(model, tc)
    store = open_store(create=True)  # cheap, so a bad store fails before the corpus is read
    data = load_corpus(corpus, max_bytes=max_bytes)
    check_corpus(data, model)
    claim, r = _train_point(store, model, tc, data, retrain=retrain, wait=wait)
    key = run_key(model, tc, data.digest)
    head = {"id": claim.id, "key": key, "store": str(store.path)}
    if claim.state == "busy":
        if as_json:
            emit({**head, "status": "running", "in_progress": True, "owner": claim.owner})
            return
        out.print(
            f"run {claim.id} (this point) is being trained now by "
            f"{escape(claim.describe_owner())}; not started again. `derisk runs` shows "
            "it when it is done (or train without --no-wait to wait for it)"
        )
        return
    result = r.as_dict() if r is not None else _stored_result(store, claim)
    if as_json:
        emit({**head, "reused": r is None, **result})
        return
    loss = result["final_val_loss"]
    loss_text = f"{loss:.4f}" if isinstance(loss, int | float) else "-"
    if r is None:
        out.print(
            f"this point is already in the store as run {claim.id} "
            f"({escape(str(result['status']))}, validation loss {loss_text} nats/byte) in "
            f"{escape(str(store.path))}; not trained again (--retrain to redo it)"
        )
        return
    out.print(
        f"run {claim.id} {escape(r.status)}: {model.arch} with "
        f"{fmt(r.params['non_embedding'])} non-embedding params "
        f"({fmt(r.params['non_embedding_active'])} active), {fmt(r.tokens)} tokens, "
        f"validation loss {loss_text} nats/byte, {fmt(r.tokens_per_s)} "
        f"tokens/s on {escape(str(r.device))}; saved to {escape(str(store.path))} "
        f"(`derisk predict --run {claim.id}` compares it with a law)"
    )


@command
def sweep(
    spec: Annotated[Path, typer.Argument(help="Sweep spec YAML: lists are grid axes.")],
    retrain: Annotated[
        bool, typer.Option("--retrain", help="Train again points the store already has.")
    ] = False,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="ADDRESS",
            help="Train each point as a Ray task (needs the ray extra of derisk): `local` starts "
            "a Ray cluster on this machine; `auto`, `ray://HEAD:10001` or `HEAD:6379` joins "
            "one. Each task asks for the spec's num_cpus (default 1) and num_gpus (0).",
        ),
    ] = None,
    retries: Annotated[
        int | None,
        typer.Option(
            "--retries",
            help="With --ray: attempts after a point's first failure (default 2) before it "
            "is recorded as failed with its reason.",
        ),
    ] = None,
    as_json: JsonOpt = False,
):
    """Run a grid of trainings; resumable (finished points are skipped).

    Points another live process is training (a second sweep of the same spec) are left to
    it and waited for at the end, so concurrent sweeps share the work. With --ray the
    points train in parallel on a Ray cluster and this process records each result as it
    arrives; a point that still fails after --retries is recorded as failed (exit code 1).
    """
    from derisk.estimators import load_sweep, sweep_points

    if retries is not None and retries < 0:
        raise DeriskError(f"--retries must be 0 or more, got {retries}")
    if ray_address is not None:
        from derisk.estimators._ray import check_address, import_ray

        check_address(ray_address)
        import_ray()  # exit 2 naming the install command before any work
    raw = load_sweep(spec)
    points, capped = sweep_points(raw, str(spec))
    if ray_address is not None:
        _sweep_on_ray(
            spec, raw, points, capped, ray_address, retries, retrain=retrain, as_json=as_json
        )
        return
    if retries is not None:
        warn("--retries applies to --ray sweeps only; ignored")
    if "num_cpus" in raw or "num_gpus" in raw:
        warn(
            f"{spec}: num_cpus/num_gpus are what each point asks of a Ray cluster "
            "(--ray ADDRESS); without --ray the points train here, one at a time"
        )
    _sweep_here(raw, points, capped, retrain=retrain, as_json=as_json)


def _sweep_corpus(raw, points):
    from derisk.estimators import check_corpus, load_corpus

    data = load_corpus(raw.get("corpus"), max_bytes=raw.get("max_bytes", 20_000_000))
    for model, _ in points:
        check_corpus(data, model)
    return data


def _sweep_here(raw, points, capped, *, retrain, as_json):
    """The sequential sweep: one point at a time in this process."""
    from derisk.estimators import run_key

    for model, tc in points:
        _check_fits(model, tc)
    store = open_store(create=True)
    data = _sweep_corpus(raw, points)
    done = ran = 0
    results, skipped, later = [], [], []

    def one(i, model, tc, *, wait):
        nonlocal done, ran
        label = f"[{i + 1}/{len(points)}] {model.arch} d{model.d_model} {tc.tokens:,} tok"
        claim, r = _train_point(store, model, tc, data, label=label, retrain=retrain, wait=wait)
        if claim.state == "busy":
            later.append((i, model, tc))
            if not as_json:
                err.print(
                    f"{escape(label)}: run {claim.id} is being trained by "
                    f"{escape(claim.describe_owner())}; coming back to it at the end"
                )
        elif r is None:
            done += 1
            skipped.append(claim.id)
        else:
            ran += 1
            key = run_key(model, tc, data.digest)
            results.append(
                {"id": claim.id, "key": key, "status": r.status, "val_loss": r.final_val_loss}
            )
            if not as_json:
                loss = r.final_val_loss
                err.print(
                    f"{escape(label)}: run {claim.id} {escape(r.status)}, val loss "
                    + (f"{loss:.4f}" if loss == loss else "-")
                )

    for i, (model, tc) in enumerate(points):
        one(i, model, tc, wait=False)
    waiting, later = later, []
    for i, model, tc in waiting:
        one(i, model, tc, wait=True)
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
        f"{len(points)} points: {done} already done, {ran} run"
        + (f" (ids {ids})" if ids else "")
        + (f", {capped} beyond max_flops" if capped else "")
        + f"; store {escape(str(store.path))}"
    )


def _point_label(i, points) -> str:
    model, tc = points[i]
    return f"[{i + 1}/{len(points)}] {model.arch} d{model.d_model} {tc.tokens:,} tok"


def _sweep_on_ray(spec, raw, points, capped, address, retries, *, retrain, as_json):
    """`sweep --ray`: every point a Ray task; this process alone writes the store."""
    from derisk.estimators._ray import TaskResources, run_sweep_on_ray

    resources = TaskResources(num_cpus=raw.get("num_cpus", 1.0), num_gpus=raw.get("num_gpus", 0.0))
    store = open_store(create=True)
    data = _sweep_corpus(raw, points)
    say = (lambda text: None) if as_json else err.print
    with progress("{task.completed:,}/{task.total:,} points") as bar:
        task = bar.add_task("sweep on Ray", total=len(points))

        def on_event(kind, info):
            if kind == "start":
                cpus, gpus = info["cluster"].get("CPU", 0), info["cluster"].get("GPU", 0)
                say(
                    f"Ray cluster ({escape(info['address'])}): {cpus:g} CPUs, {gpus:g} GPUs; "
                    f"each point asks for {resources.num_cpus:g} CPU and "
                    f"{resources.num_gpus:g} GPU"
                )
                return
            if kind == "busy":
                say(
                    f"{escape(_point_label(info['index'], points))}: run {info['id']} is being "
                    f"trained by {escape(info['owner'])}; waiting for it"
                )
                return
            if kind == "retry":
                say(
                    f"{escape(_point_label(info['index'], points))}: run {info['id']} attempt "
                    f"{info['attempt']} failed ({escape(info['error'][:300])}); retrying"
                )
                return
            if kind not in ("skipped", "trained", "failed"):
                return
            o = info["outcome"]
            bar.advance(task)
            label = escape(_point_label(o.index, points))
            if kind == "trained":
                loss = f"{o.val_loss:.4f}" if o.val_loss is not None else "-"
                say(
                    f"{label}: run {o.id} {escape(o.status)}, val loss {loss}"
                    + (f" (on {escape(o.host)})" if o.host else "")
                )
            elif kind == "failed":
                say(f"[red]{label}: run {o.id} failed[/]: {escape(o.error or '')}")

        result = run_sweep_on_ray(
            store,
            points,
            data,
            address=address,
            resources=resources,
            retries=2 if retries is None else retries,
            retrain=retrain,
            on_event=on_event,
            source=str(spec),
        )
    done = [o for o in result.outcomes if o.state == "done"]
    trained = [o for o in result.outcomes if o.state == "trained"]
    failed = list(result.failed)
    summary = {
        "points": len(points),
        "skipped_finished": len(done),
        "skipped_ids": [o.id for o in done],
        "ran": len(trained),
        "failed": len(failed),
        "over_compute_cap": capped,
        "store": str(store.path),
        "ids": [o.id for o in trained],
        "results": [
            {
                "id": o.id,
                "key": o.key,
                "status": o.status,
                "val_loss": o.val_loss,
                "attempts": o.attempts,
                "host": o.host,
                "saved": o.saved,
            }
            for o in trained
        ],
        "failures": [
            {"id": o.id, "key": o.key, "attempts": o.attempts, "error": o.error} for o in failed
        ],
        "ray": {
            "address": result.address,
            "num_cpus": resources.num_cpus,
            "num_gpus": resources.num_gpus,
            "cluster": {k: v for k, v in result.cluster.items() if k in ("CPU", "GPU")},
        },
    }
    if as_json:
        emit(summary)
    else:
        ids = ", ".join(str(o.id) for o in trained)
        out.print(
            f"{len(points)} points on Ray: {len(done)} already done, {len(trained)} run"
            + (f" (ids {ids})" if ids else "")
            + (f", [red]{len(failed)} failed[/] (`derisk runs` shows why)" if failed else "")
            + (f", {capped} beyond max_flops" if capped else "")
            + f"; store {escape(str(store.path))}"
        )
    if failed:
        raise typer.Exit(1)


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
                        "stale": store.stale(r),
                        "error": r.get("error"),
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
            escape(r["status"] + (" (process gone)" if store.stale(r) else "")),
        )
    out.print(t)
    if not rows:
        out.print("the store holds no runs" + (f" of arch {escape(arch)}" if arch else ""))
    if csv_out is not None:
        out.print(f"exported finished runs to {escape(str(csv_out))}")


COMMANDS = [("train", train_cmd), ("sweep", sweep), ("runs", runs)]
