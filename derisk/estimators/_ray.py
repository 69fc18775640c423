"""Sweeps on a Ray cluster: each grid point trains as a Ray task; only the driver writes.

The driver claims each point in the run store exactly as the sequential sweep does (a
finished point is skipped, a point another live process trains is waited for, a failed or
orphaned one is retaken in place), submits the claimed points as tasks with the spec's
resources, and records each result in its own store transaction as it arrives. Workers
never open the store (it is a file on the driver's machine): they receive the corpus from
the object store, train, and return the `RunResult`. So killing the driver loses at most
the points in flight (their rows stay "running" with a dead owner and are retaken by the
next sweep), and killing a worker fails only its task, which the driver retries.

`ray` is an optional dependency, imported only here and only when a sweep asks for it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import re
import socket
import time
from collections.abc import Callable

from derisk.errors import DeriskError

INSTALL_HINT = "pip install 'derisk[ray]'"
RECHECK_BUSY_S = 5.0  # how often points another process is training are looked at again
WAIT_S = 1.0  # the driver's poll for finished tasks (heartbeats are due between polls)

# local | auto | ray://host:port (Ray Client) | host:port (the head's GCS address)
_ADDRESS_RE = re.compile(r"^(local|auto|ray://[^\s/:]+:\d{1,5}/?|[^\s/:]+:\d{1,5})$")


class RayMissing(DeriskError):
    """`ray` is not installed (or does not import)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskResources:
    """What each grid point's task asks of the cluster (the spec's `num_cpus`/`num_gpus`)."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0  # a fraction (0.5: two points share a GPU) or a whole number


@dataclasses.dataclass(frozen=True, kw_only=True)
class PointOutcome:
    """What became of one grid point in a Ray sweep.

    `state`: "done" (already finished in the store: skipped), "trained" (this sweep
    recorded its result: `status` is "finished" or "diverged: ..."), "failed" (every
    attempt failed; `error` says why, and the store holds it as failed).
    """

    index: int  # position in the sweep's point list
    id: int  # run id in the store
    key: str
    state: str
    status: str
    val_loss: float | None = None
    attempts: int = 0
    error: str | None = None
    host: str | None = None  # the worker that trained it
    saved: bool = True  # False: another process retook the row meanwhile (not written)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RaySweepResult:
    points: int
    outcomes: tuple[PointOutcome, ...]  # in the order the points were settled
    address: str  # what the driver connected to
    resources: TaskResources
    cluster: dict  # the cluster's total resources when the sweep started

    @property
    def failed(self) -> tuple[PointOutcome, ...]:
        return tuple(o for o in self.outcomes if o.state == "failed")


def import_ray():
    """The `ray` module, or `RayMissing` naming the install command."""
    try:
        import ray
    except ImportError as exc:
        raise RayMissing(
            f"--ray needs Ray, which is not installed ({exc}); install it with "
            f"`{INSTALL_HINT}` (on the driver and every node of the cluster)"
        ) from None
    return ray


def check_address(address: str | None) -> str:
    """`local` (also for None or ""), `auto`, `ray://host:port` or `host:port`; else
    `DeriskError` saying what is accepted."""
    address = (address or "local").strip()
    if not _ADDRESS_RE.match(address):
        raise DeriskError(
            f"--ray {address!r} is not a Ray address: use `local` (start a Ray cluster on "
            "this machine), `auto` (the cluster `ray start --head` runs here), "
            "`ray://HEAD:10001` (Ray Client) or `HEAD:6379` (the head's GCS address)"
        )
    return address


def memory_shortfall(model, tc) -> str | None:
    """Why a run would not fit in this process's device memory (None if it fits): the
    estimate of `training_bytes` against the first JAX device's limit, else host RAM.
    The caller adds the fix in its own terms (flags or spec keys)."""
    import jax

    from derisk.estimators._train import training_bytes

    need = training_bytes(model, tc)
    try:
        have = jax.devices()[0].memory_stats()["bytes_limit"]
    except (AttributeError, KeyError, TypeError, RuntimeError):
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need <= 0.8 * have:
        return None
    return (
        f"a {model.arch} model with d_model {model.d_model}, {model.n_layer} layers and "
        f"batch {tc.batch_size} x {model.seq_len} needs ~{need / 2**30:.1f} GiB to train, "
        f"more than this device's {have / 2**30:.1f} GiB"
    )


class _Refused(Exception):
    """A point the worker will not train (it cannot fit): recorded as failed, not retried."""


def train_task(model, tc, corpus, train_fn=None):
    """The body of one Ray task: train one point on this worker and return
    (RunResult, hostname). Runs in the worker process; touches no store.

    The model keeps `impl="auto"`, so on a GPU worker the MoE layer runs the Pallas kernel,
    as `derisk train` does there, and the jnp reference on a CPU worker. A task that asked
    for no GPU runs JAX on the CPU even on a GPU node.
    """
    import ray

    if not ray.get_runtime_context().get_accelerator_ids().get("GPU"):
        # Ray hides no GPU from a task that asked for none: without this, JAX in a CPU
        # point on a GPU node would take the node's first GPU (and 75% of its memory).
        import jax

        jax.config.update("jax_platforms", "cpu")
    if train_fn is None:
        from derisk.estimators._train import train as train_fn

        why = memory_shortfall(model, tc)
        if why is not None:
            raise _Refused(f"{why}; use a smaller d_model, n_layer, batch_size or seq_len")
    return train_fn(model, tc, corpus), socket.gethostname()


def _reason(exc: BaseException, ray) -> tuple[str, bool]:
    """(one line saying why a task failed, whether retrying can help)."""
    cause = getattr(exc, "cause", None)  # RayTaskError wraps the worker's exception
    if isinstance(cause, _Refused):
        return f"refused: {cause}", False
    if isinstance(cause, BaseException):
        text = f"{type(cause).__name__}: {cause}"
        if isinstance(cause, MemoryError) or "RESOURCE_EXHAUSTED" in text:
            return f"out of memory: {text}", False
        return text, True
    if isinstance(exc, ray.exceptions.WorkerCrashedError | ray.exceptions.NodeDiedError):
        return f"the Ray worker died ({type(exc).__name__})", True
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}"[:1000], True


def connect(address: str | None, *, resources: TaskResources, source: str = "the spec"):
    """Connect to (or start) a Ray cluster; returns (ray, started_here, cluster resources).

    `local`: start a Ray instance on this machine (stopped again by `disconnect`); `auto`
    or an address: join that cluster. A process already connected to Ray keeps its
    connection (and is not disconnected afterwards). A task no node could ever run is
    refused up front for a local cluster (it would wait forever), a warning otherwise
    (an autoscaler may still add such a node).
    """
    ray = import_ray()
    address = check_address(address)
    started = False
    if not ray.is_initialized():
        # Worker output stays in the cluster's logs: failures come back as exceptions.
        kw = {"log_to_driver": False, "logging_level": logging.WARNING}
        if address == "local":  # "local" always starts a new instance, whatever RAY_ADDRESS
            kw["include_dashboard"] = False
        try:
            ray.init(address=address, **kw)
        except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            if "ray[client]" in first:
                fix = "install Ray Client here (pip install 'ray[client]') or run on the head"
            elif address == "local":
                fix = "see the Ray logs under /tmp/ray"
            else:
                fix = (
                    "check that a cluster runs there (`ray status` on its head; start one with "
                    "`ray start --head` or `ray up cluster.yaml`); a cluster with token "
                    "authentication also needs RAY_AUTH_MODE=token and its token in "
                    "~/.ray/auth_token here; or use `--ray local`"
                )
            raise DeriskError(
                f"--ray {address}: cannot "
                + ("start a local Ray cluster" if address == "local" else "connect to it")
                + f" ({type(exc).__name__}: {first}); {fix}"
            ) from None
        started = True
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    fits = any(
        n.get("CPU", 0) >= resources.num_cpus and n.get("GPU", 0) >= resources.num_gpus
        for n in nodes
    )
    if not fits:
        have = (
            ", ".join(f"{n.get('CPU', 0):g} CPU/{n.get('GPU', 0):g} GPU" for n in nodes)
            or "none alive"
        )
        message = (
            f"{source}: each point asks for num_cpus {resources.num_cpus:g} and num_gpus "
            f"{resources.num_gpus:g}, which no node of the Ray cluster has (its nodes: {have})"
        )
        if address == "local" and started:
            disconnect(ray, started)
            raise DeriskError(
                message + "; lower num_cpus/num_gpus in the spec or run on a cluster with "
                "such nodes (--ray ADDRESS)"
            )
        import warnings

        from derisk.errors import DeriskWarning

        warnings.warn(
            message + "; its tasks wait until such a node joins", DeriskWarning, stacklevel=2
        )
    return ray, started, dict(ray.cluster_resources())


def disconnect(ray, started: bool) -> None:
    if started:
        with contextlib.suppress(Exception):
            ray.shutdown()


def run_sweep_on_ray(
    store,
    points,
    corpus,
    *,
    address: str | None = None,
    resources: TaskResources | None = None,
    retries: int = 2,
    retrain: bool = False,
    train_fn: Callable | None = None,
    on_event: Callable[[str, dict], None] | None = None,
    source: str = "the spec",
) -> RaySweepResult:
    """Train every (ModelConfig, TrainConfig) point of a sweep as a Ray task.

    The store is written by this process only, one transaction per event: a claim before
    a point is submitted, its result (`finish`) as soon as it arrives, or its failure
    (`fail`, with the reason) after `retries` more attempts. A failed attempt (an
    exception, a worker that died) is resubmitted; a point that cannot fit in the
    worker's memory is failed at once. Points another live process is training are
    re-checked every few seconds and taken over if it dies. `train_fn(model, tc, corpus)`
    replaces the trainer (tests); `on_event(kind, info)` hears "start", "skipped",
    "busy", "submitted", "retry", "trained" and "failed".

    On an exception or interrupt in the driver, the points in flight are marked failed
    ("interrupted") and retaken by the next sweep; everything recorded stays.
    """
    from derisk.estimators._store import HEARTBEAT_S, _is_done, run_key

    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise DeriskError(f"--retries must be a whole number >= 0, got {retries!r}")
    resources = resources or TaskResources()
    emit = on_event or (lambda kind, info: None)
    keys = [run_key(m, t, corpus.digest) for m, t in points]
    outcomes: list[PointOutcome] = []
    statuses = [store.status(k) for k in keys]
    if not retrain and all(st is not None and _is_done(st) for st in statuses):
        # a finished sweep run again: nothing to train, so no cluster to start or join
        for i, (k, st) in enumerate(zip(keys, statuses, strict=True)):
            o = PointOutcome(index=i, id=store.id_of(k), key=k, state="done", status=st)
            outcomes.append(o)
            emit("skipped", {"outcome": o})
        return RaySweepResult(
            points=len(points),
            outcomes=tuple(outcomes),
            address=check_address(address),
            resources=resources,
            cluster={},
        )
    ray, started, cluster = connect(address, resources=resources, source=source)
    pending: dict = {}  # ObjectRef -> (index, key, claim id, attempt)
    try:
        options = {"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus}
        if 0 < resources.num_gpus < 1:  # GPU sharers must not each preallocate 75% of it
            options["runtime_env"] = {"env_vars": {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}}
        # Ray's own retries are off: every failure comes back here, to be counted and said.
        remote = ray.remote(max_retries=0, **options)(train_task)
        corpus_ref = ray.put(corpus)
        emit("start", {"points": len(points), "cluster": cluster, "address": address})

        def submit(i, claim_id, attempt):
            m, t = points[i]
            ref = remote.remote(m, t, corpus_ref, train_fn)
            pending[ref] = (i, keys[i], claim_id, attempt)
            emit("submitted", {"index": i, "id": claim_id, "attempt": attempt})

        def claim_all(indices, *, first_time):
            busy = []
            for i in indices:
                m, t = points[i]
                claim = store.claim(keys[i], m, t, corpus, retrain=retrain and first_time)
                if claim.state == "done":
                    o = PointOutcome(
                        index=i, id=claim.id, key=keys[i], state="done", status=claim.status
                    )
                    outcomes.append(o)
                    emit("skipped", {"outcome": o})
                elif claim.state == "busy":
                    busy.append(i)
                    if first_time:
                        emit("busy", {"index": i, "id": claim.id, "owner": claim.describe_owner()})
                else:
                    submit(i, claim.id, 1)
            return busy

        busy = claim_all(range(len(points)), first_time=True)
        beat = recheck = time.monotonic()
        while pending or busy:
            if pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_S)
            else:
                ready = []
                time.sleep(WAIT_S)
            for ref in ready:
                i, key, claim_id, attempt = pending.pop(ref)
                try:
                    result, host = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 (every task failure is data here)
                    why, retryable = _reason(exc, ray)
                    if retryable and attempt <= retries:
                        emit(
                            "retry", {"index": i, "id": claim_id, "attempt": attempt, "error": why}
                        )
                        submit(i, claim_id, attempt + 1)
                        continue
                    detail = f"{why} (after {attempt} attempt{'s' * (attempt > 1)})"
                    store.fail(key, detail[:2000])
                    o = PointOutcome(
                        index=i,
                        id=claim_id,
                        key=key,
                        state="failed",
                        status="failed",
                        attempts=attempt,
                        error=detail,
                    )
                    outcomes.append(o)
                    emit("failed", {"outcome": o})
                    continue
                saved = store.finish(key, result)
                loss = result.final_val_loss
                o = PointOutcome(
                    index=i,
                    id=claim_id,
                    key=key,
                    state="trained",
                    status=result.status,
                    val_loss=loss if isinstance(loss, float) and math.isfinite(loss) else None,
                    attempts=attempt,
                    host=host,
                    saved=saved,
                )
                outcomes.append(o)
                emit("trained", {"outcome": o})
            now = time.monotonic()
            if pending and now - beat > HEARTBEAT_S:  # "still alive", for drivers on other hosts
                beat = now
                for _, key, _, _ in list(pending.values()):
                    with contextlib.suppress(DeriskError):
                        store.heartbeat(key)
            if busy and now - recheck > RECHECK_BUSY_S:
                recheck = now
                busy = claim_all(busy, first_time=False)
    except BaseException as exc:
        why = (
            "interrupted"
            if isinstance(exc, KeyboardInterrupt | SystemExit)
            else f"the driver stopped: {type(exc).__name__}: {exc}"[:2000]
        )
        for ref, (_, key, _, _) in list(pending.items()):
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
            with contextlib.suppress(DeriskError):
                store.fail(key, why)
        raise
    finally:
        disconnect(ray, started)
    return RaySweepResult(
        points=len(points),
        outcomes=tuple(outcomes),
        address=check_address(address),
        resources=resources,
        cluster=cluster,
    )
