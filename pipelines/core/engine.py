"""Ray setup every pass shares: joining the cluster, what a model actor asks for, and turning a failure of the
run folder's storage into one line.

Ray is imported inside the functions, never at import time: a command that fails on its input, and
`tailor --help`, stay fast.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterable, Iterator

from pipelines.core.config import ConfigError

# the signal that stopped this command, when one did (SIGTERM goes through Ray's handler: see _note_sigterm)
stopped_by: int | None = None


def init_ray(address: str | None) -> None:
    """Join the configured cluster (or RAY_ADDRESS, as under `ray job submit`); else start a private local Ray."""
    import ray

    if ray.is_initialized():
        return
    source = "ray.address" if address else "RAY_ADDRESS" if os.environ.get("RAY_ADDRESS") else None
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    level = getattr(logging, os.environ.get("TAILOR_RAY_LOG_LEVEL", "WARNING").upper(), logging.WARNING)
    if address not in ("local", "auto"):
        _check_reachable(address, source)
    # the workers' and raylet's own lines (e.g. `(raylet) Task ... submit failed` on Ctrl-C) are echoed by the
    # driver unless told not to; the quiet command keeps them in Ray's session logs (`-v` shows them)
    to_driver = os.environ.get("TAILOR_RAY_LOG_TO_DRIVER", "1") != "0"
    try:
        ray.init(address=address, include_dashboard=False, configure_logging=True, logging_level=level,
                 log_to_driver=to_driver)
    except ConnectionError as err:  # `auto` (the cluster configs) or an address with no Ray cluster there
        if source is None or address == "local":
            raise
        raise _no_cluster(source, address, f"no running Ray cluster to join ({' '.join(str(err).split())[:160]})") \
            from None
    _note_sigterm()


def session_logs() -> str | None:
    """The folder of this driver's Ray session logs (workers, raylet, Ray Data), where the quiet command's Ray
    lines go: Ray keeps them under its own temp folder (`/tmp/ray/session_*/logs` on a local Ray), not in the
    run folder, which may be s3://. None before Ray starts."""
    import ray

    if not ray.is_initialized():
        return None
    try:
        return ray._private.worker.global_worker.node.get_logs_dir_path()
    except AttributeError:  # a Ray whose internals moved: the path is a convenience, not a result
        return None


def _note_sigterm() -> None:
    """Remember a SIGTERM, then let Ray's own handler run (it stops the local Ray's processes and exits
    with 1), so the command can say it was stopped rather than show the stack trace Ray's native
    handler writes."""
    if threading.current_thread() is not threading.main_thread():
        return
    ray_handler = signal.getsignal(signal.SIGTERM)

    def handler(signum, frame):
        global stopped_by
        if stopped_by is not None:  # a second SIGTERM while Ray's handler stops its processes: let it finish
            return
        stopped_by = signum
        if callable(ray_handler):
            ray_handler(signum, frame)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def _no_cluster(source: str, address: str, why: str) -> ConfigError:
    return ConfigError(f"{source} {address!r}: {why}. Start one (`ray start --head`), or run on a private local Ray "
                       "with --set ray.address=null" + (" and RAY_ADDRESS unset" if source == "RAY_ADDRESS" else ""))


def _check_reachable(address: str, source: str | None) -> None:
    """One TCP connection to HOST:PORT (or ray://HOST:PORT) first: Ray itself retries an address where nothing
    listens for minutes before it gives up."""
    import socket

    scheme = address.partition("://")[0] if "://" in address else None
    if scheme not in (None, "ray"):
        raise ConfigError(f"{source} {address!r}: an {scheme}:// URL (the dashboard's, for `ray job submit`?) is not "
                          "an address to join; give the cluster's GCS HOST:6379, ray://HOST:10001 or auto")
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # not host:port; Ray's own error says what is wrong with it
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as err:
        raise _no_cluster(source, address, f"no Ray cluster answers there ({err})") from None


def cluster_cpus() -> int:
    """The CPUs of the cluster this process joined (at least 1): what every pass sizes its work by."""
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def cluster_gpus() -> float:
    import ray

    return ray.cluster_resources().get("GPU", 0)


def embed_actor_resources(options, gpus: float | None = None) -> dict:
    """What each model actor asks Ray for: one whole GPU where the cluster has GPUs (device auto or cuda),
    else `cpus_per_actor` CPUs. infra/ manifests size their GPU groups by this (tests/test_infra.py).
    `gpus`: the cluster's GPUs (default: ask the cluster)."""
    gpus = cluster_gpus() if gpus is None else gpus
    use_gpu = options.device == "cuda" or (options.device == "auto" and gpus >= 1)
    return {"num_gpus": 1, "num_cpus": 0.5} if use_gpu else {"num_gpus": 0, "num_cpus": options.cpus_per_actor}


# ---------------------------------------------------------------- the fan-out of a pass over a run's shards

def map_shards(worker: type, shards: list[str], kwargs: dict, progress: bool = False,
               actors: int | None = None, ray_progress: bool | None = None, label: str = "shards") -> Iterator[dict]:
    """Run `worker` over shards on an actor pool, yielding each shard's result row as it finishes.

    `worker(**kwargs)` is built once per actor (what is costly to build: an automaton, a model, concept
    embeddings), then called with a table of one `shard` per work item; it writes that shard's output whole
    (RunPaths writes are atomic) and returns a row per shard. The caller lists pending shards once
    (RunPaths.pending), so a rerun resumes; the pool has `actors` actors (default one per cluster CPU),
    never more than there are shards. `progress`: tailor's progress line of shards done (on stderr);
    `ray_progress`: Ray Data's own bars too (default: with `progress` under `-v`, the root logger at INFO)."""
    import ray

    from pipelines.core.console import ProgressLine

    init_ray(None)
    ray.data.DataContext.get_current().enable_progress_bars = \
        ray_bars(progress) if ray_progress is None else ray_progress
    size = max(1, min(len(shards), actors or cluster_cpus()))
    ds = ray.data.from_items([{"shard": s} for s in shards], override_num_blocks=len(shards))
    ds = ds.map_batches(worker, batch_size=1, batch_format="pyarrow", num_cpus=1, fn_constructor_kwargs=kwargs,
                        compute=ray.data.ActorPoolStrategy(size=size))
    line = ProgressLine(len(shards), label=label, unit="shards", show_ok=False) if progress else None
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        rows = batch.to_pylist()
        if line is not None:
            line.update(len(rows), 0)
        yield from rows
    if line is not None:
        line.close()


def ray_bars(progress: bool) -> bool:
    """Whether a pass shows Ray Data's own bars beside tailor's progress line: only under `-v` (the root logger
    at INFO)."""
    return progress and logging.getLogger().isEnabledFor(logging.INFO)


def run_tasks(fn, items: Iterable[tuple], window: int | None = None, on_result=None, **options) -> list:
    """`fn(*item)` as one Ray task per item, at most `window` in flight (default two per cluster CPU, so a long
    stream of items is never all queued at once); the results in item order. `on_result(result)` is called as
    each finishes (progress); `options` are Ray's task options (default num_cpus=1)."""
    import ray

    init_ray(None)
    task = ray.remote(fn).options(**{"num_cpus": 1, **options})
    window = window or 2 * cluster_cpus()
    results: dict = {}
    in_flight: dict = {}

    def collect(ready) -> None:
        for ref, result in zip(ready, ray.get(ready), strict=True):
            results[in_flight.pop(ref)] = result
            if on_result is not None:
                on_result(result)

    for index, item in enumerate(items):
        in_flight[task.remote(*item)] = index
        if len(in_flight) >= window:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            collect(ready)
    if in_flight:
        collect(list(in_flight))
    return [results[i] for i in range(len(results))]


class StorageError(ConfigError):
    """The run's storage failed (a folder that cannot be written, S3 refusing): one line, printed by the CLI
    (exit 2), no traceback."""


@contextlib.contextmanager
def storage_errors(output: str):
    """An OSError from the run folder, raised here or in any Ray task (PermissionError from a read-only
    folder or a 403 from S3, a full disk), becomes one line naming the output. Nothing half-written looks
    complete: a shard counts as done only once its marker exists, and run.json is written last."""
    try:
        yield
    except ConfigError:
        raise  # already one line (a bad model name is not a storage problem, whatever it wraps)
    except Exception as err:
        import ray

        cause, seen = err, set()
        while cause is not None and id(cause) not in seen:  # the storage error itself, not Ray's wrapper of it
            if _is_storage_error(cause) and not isinstance(cause, ray.exceptions.RayError):
                break
            seen.add(id(cause))
            cause = getattr(cause, "cause", None) or cause.__cause__ or cause.__context__
        if cause is None or not _is_storage_error(cause):
            raise
        text = " ".join(f"{type(cause).__name__}: {cause}".split())
        raise StorageError(f"storage error: {text} (run folder {output})") from None


def _is_storage_error(err: BaseException) -> bool:
    """An OSError, or an error of the S3 client itself (no credentials, a refused request), which botocore
    raises outside the OSError family."""
    return isinstance(err, OSError) or type(err).__module__.split(".")[0] in ("botocore", "aiobotocore")
