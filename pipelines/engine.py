"""Ray setup every pass shares: joining the cluster, what a model actor asks for, and turning a failure of the
run folder's storage into one line.

Ray is imported inside the functions, never at import time: a command that fails on its input, and
`tailor --help`, stay fast.
"""

from __future__ import annotations

import contextlib
import logging
import os

from pipelines.config import ConfigError


def init_ray(address: str | None) -> None:
    """Join the configured cluster (or RAY_ADDRESS, as under `ray job submit`); else start a private local Ray."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    level = getattr(logging, os.environ.get("TAILOR_RAY_LOG_LEVEL", "WARNING").upper(), logging.WARNING)
    ray.init(address=address, include_dashboard=False, configure_logging=True, logging_level=level)


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
