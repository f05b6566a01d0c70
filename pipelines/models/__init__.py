"""Models that ship with tailor, addressed as `builtin:NAME` in configs."""

from __future__ import annotations

from pathlib import Path

BUILTIN = {name: Path(__file__).resolve().parent / name for name in ("demo-clip", "demo-captioner")}


def resolve_model(name: str) -> str:
    """`builtin:demo-clip` (or demo-captioner) -> its folder; a Hugging Face name or a path: unchanged."""
    if name.startswith("builtin:"):
        key = name.split(":", 1)[1]
        if key not in BUILTIN:
            raise ValueError(f"unknown builtin model {name!r} (known: {', '.join('builtin:' + k for k in BUILTIN)})")
        return str(BUILTIN[key])
    return name
