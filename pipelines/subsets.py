"""A run's subsets (RUN/subsets/NAME/, written by `tailor select` and `tailor metaclip-balance`), as the passes
that read one find it: materialize, recaption, evaluate."""

from __future__ import annotations

from pipelines.config import ConfigError, check_name
from pipelines.storage import RunPaths


class SubsetError(ConfigError):
    """The run has no subset of that name; the message lists those it has."""


def subset_manifest(paths: RunPaths, name: str) -> str:
    """RUN/subsets/NAME/manifest.parquet, or a one-line error listing the subsets there are."""
    manifest = paths.subset_manifest(check_name(name))
    if paths.exists(manifest):
        return manifest
    have = [p.rsplit("/", 1)[-1] for p in paths.list("subsets")
            if paths.exists(f"{p}/manifest.parquet")]
    listed = ", ".join(have) if have else "none yet; make one with `tailor select` or `tailor metaclip-balance`"
    raise SubsetError(f"{paths.url} has no subset {name!r} (subsets: {listed})")
