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
    if name.startswith(("/", "./", "../", "~")) and not Path(name).expanduser().is_dir():
        raise ValueError(f"no model folder at {name!r} (a local model is a folder holding config.json; a Hugging "
                         "Face model is named ORG/NAME)")
    return str(Path(name).expanduser()) if name.startswith("~") else name
