"""Captions/s of a captioning model on this machine: tailor's batched Captioner vs. transformers' pipeline.

    python benchmarks/recaption.py                       # the demo captioner, 256 fresh demo renders
    python benchmarks/recaption.py --model PATH --n 64   # any image-to-text checkpoint

The peer is what one writes without tailor: the model loaded with AutoModelForImageTextToText and one
greedy generate() per image (transformers 5's image-to-text pipeline needs a multimodal processor, which a
VisionEncoderDecoder checkpoint lacks). Both produce greedy captions of the same model (the number that
agree is reported). Torch threads are fixed for both. Results: stdout (JSON).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def renders(n: int, seed: int) -> list[bytes]:
    from pipelines.demo.web import world
    from pipelines.demo.web.render import flatten, render_image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        concept = world.CONCEPTS[int(rng.integers(len(world.CONCEPTS)))]
        short = int(rng.integers(64, 256))
        ratio = float(np.exp(rng.uniform(-math.log(2), math.log(2))))
        size = (int(short * ratio), short) if ratio >= 1 else (short, int(short / ratio))
        buffer = io.BytesIO()
        flatten(render_image([concept], *size, rng)).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="builtin:demo-captioner")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from network_guard import install_network_guard

    refused = install_network_guard(Path(__file__).resolve().parent / ".work" / "recaption")

    import torch
    from PIL import Image

    from operators.caption import Captioner, CaptionOptions
    from pipelines.models import resolve_model

    torch.set_num_threads(args.threads)
    path = resolve_model(args.model)
    images = renders(args.n, seed=7)
    batch = pa.table({"key": [str(i) for i in range(args.n)], "image": images, "caption": ["x"] * args.n})

    captioner = Captioner(path, CaptionOptions(model=args.model, batch_size=args.batch_size))
    captioner(batch.slice(0, 4))  # warm-up
    started = time.perf_counter()
    ours = captioner(batch).column("caption").to_pylist()
    ours_s = time.perf_counter() - started

    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    # the peer: the model loaded the usual way, one generate() per image (transformers 5's image-to-text
    # pipeline needs a ProcessorMixin, which a VisionEncoderDecoder checkpoint does not have)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    processor, tokenizer = AutoImageProcessor.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    pil = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]

    def peer(image):
        with torch.inference_mode():
            out = model.generate(pixel_values=processor(images=[image], return_tensors="pt")["pixel_values"],
                                 num_beams=1, do_sample=False)
        return tokenizer.decode(out[0], skip_special_tokens=True).strip()

    peer(pil[0])
    started = time.perf_counter()
    theirs = [peer(image) for image in pil]
    peer_s = time.perf_counter() - started
    agree = sum(a == " ".join(b.split()) for a, b in zip(ours, theirs, strict=True))
    print(json.dumps({"model": args.model, "images": args.n, "batch_size": args.batch_size, "threads": args.threads,
                      "tailor_captions_per_s": round(args.n / ours_s, 1),
                      "per_image_loop_captions_per_s": round(args.n / peer_s, 1),
                      "ratio": round(peer_s / ours_s, 2), "same_caption": agree}, indent=2))
    if refused.read_text().strip():
        raise SystemExit(f"connections outside the machine were attempted: {refused.read_text()}")


if __name__ == "__main__":
    main()
