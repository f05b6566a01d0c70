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

from pipelines.config import ConfigError

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
    try:
        ray.init(address=address, include_dashboard=False, configure_logging=True, logging_level=level)
    except ConnectionError as err:  # `auto` (the cluster configs) or an address with no Ray cluster there
        if source is None or address == "local":
            raise
        raise _no_cluster(source, address, f"no running Ray cluster to join ({' '.join(str(err).split())[:160]})") \
            from None
    _note_sigterm()


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


def embed_actor_resources(options, cluster_gpus: float) -> dict:
    """What each model actor asks Ray for: one whole GPU where the cluster has GPUs (device auto or cuda),
    else `cpus_per_actor` CPUs. infra/ manifests size their GPU groups by this (tests/test_infra.py)."""
    use_gpu = options.device == "cuda" or (options.device == "auto" and cluster_gpus >= 1)
    return {"num_gpus": 1, "num_cpus": 0.5} if use_gpu else {"num_gpus": 0, "num_cpus": options.cpus_per_actor}


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
