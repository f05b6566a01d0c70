"""A labelled, balanced evaluation set of the demo world, in ImageFolder layout.

    python -m pipelines.cli demo-web eval-set OUT --per-concept 10 --seed 100

writes OUT/<concept>/<i>.jpg: `per_concept` fresh renders of every demo concept, one concept per image,
sizes and aspect ratios as on the demo web. The seed is independent of any demo web's (their renders come
from per-page seeds derived from the web seed), so evaluation images are never training images.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from pipelines.demo.web import world
from pipelines.demo.web.render import flatten, render_image

EVAL_SEED_OFFSET = 1_000_003  # keeps eval renders apart from web renders made with the same small seed


def build_eval_set(out: str | Path, per_concept: int = 10, seed: int = 100) -> dict:
    if per_concept < 1:
        raise ValueError(f"per_concept must be >= 1 (got {per_concept})")
    out = Path(out)
    rng = np.random.default_rng(seed + EVAL_SEED_OFFSET)
    images = 0
    for concept in world.CONCEPTS:
        folder = out / concept
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_concept):
            short = int(rng.integers(64, 256))
            ratio = float(np.exp(rng.uniform(-math.log(2), math.log(2))))
            width, height = (int(short * ratio), short) if ratio >= 1 else (short, int(short / ratio))
            image = flatten(render_image([concept], width, height, rng))
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=90)
            (folder / f"{i:04d}.jpg").write_bytes(buffer.getvalue())
            images += 1
    return {"out": str(out), "concepts": len(world.CONCEPTS), "images": images, "seed": seed}
