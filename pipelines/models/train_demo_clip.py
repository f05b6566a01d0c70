"""Train the demo CLIP: a tiny transformers CLIPModel that knows the demo web's concept world.

    python -m pipelines.models.train_demo_clip            # writes pipelines/models/demo-clip/

Deterministic (fixed seeds, fixed threads, deterministic torch algorithms) and CPU-only: a few
minutes on 2 cores. The output is an ordinary Hugging Face checkpoint folder (config.json,
model.safetensors, tokenizer.json, preprocessor_config.json) that loads with
`AutoModel.from_pretrained` like any CLIP, so the demo exercises the real loading path.

The committed weights: 1200 steps from scratch (batch 160, seed 1234) on the earlier renderer (flat
gradients, commit 1f44cd4), then, after the renderer moved to random pastel fields, continued with
`--init`: 400 steps (lr 6e-4, seed 2026), 600 steps (batch 256, lr 4e-4, seed 2027) and 600 steps
(batch 256, lr 3e-4, seed 2028). Each run is deterministic; a from-scratch run on the current renderer
(`--steps 2400`) is the simpler way to rebuild them and has not been run yet.

Training pairs are drawn fresh from the demo world's renderer and caption generator, with
concepts sampled uniformly (not Zipf) so tail concepts are learnt too; image sizes and aspect
ratios vary as on the demo web and go through the same image processor as at inference.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, PreTrainedTokenizerFast

from pipelines.demo_web import world
from pipelines.demo_web.render import flatten, render_image
from pipelines.models.training import clipped_step, cosine_with_warmup

log = logging.getLogger(__name__)

OUT = Path(__file__).resolve().parent / "demo-clip"
IMAGE_SIZE = 48
CONTEXT = 32
SPECIAL = ["<|pad|>", "<|startoftext|>", "<|endoftext|>"]


def sample_pair(rng: np.random.Generator) -> tuple[object, str]:
    first = world.CONCEPTS[int(rng.integers(len(world.CONCEPTS)))]
    concepts = [first]
    if rng.random() < 0.25:
        concepts.append(world.sample_other_concept(rng, concepts))
    short = int(rng.integers(48, 112))
    ratio = float(np.exp(rng.uniform(-math.log(3), math.log(3))))
    width, height = (int(short * ratio), short) if ratio >= 1 else (short, int(short / ratio))
    image = flatten(render_image(concepts, width, height, rng, transparent=rng.random() < 0.1))
    lang = "en" if rng.random() < 0.9 else str(rng.choice(list(world.FOREIGN_TEMPLATES)))
    # web alt-texts often name only the main subject of a two-concept image
    named = concepts if rng.random() < 0.5 else concepts[:1]
    return image, world.make_caption(rng, named, lang).text


def build_tokenizer(rng: np.random.Generator, vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (any text encodes, no unknown tokens), lower-cased like CLIP's tokenizer."""
    corpus = [sample_caption for sample_caption in (world.make_caption(
        rng, [world.CONCEPTS[int(rng.integers(len(world.CONCEPTS)))]],
        "en" if rng.random() < 0.9 else str(rng.choice(list(world.FOREIGN_TEMPLATES)))).text for _ in range(30_000))]
    corpus += list(world.CONCEPTS)
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    bos, eos = tok.token_to_id(SPECIAL[1]), tok.token_to_id(SPECIAL[2])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SPECIAL[1]} $A {SPECIAL[2]}", special_tokens=[(SPECIAL[1], bos), (SPECIAL[2], eos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=SPECIAL[0], bos_token=SPECIAL[1],
                                   eos_token=SPECIAL[2], model_max_length=CONTEXT)


def build_model(tokenizer: PreTrainedTokenizerFast) -> CLIPModel:
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=512, num_hidden_layers=3,
                         num_attention_heads=4, max_position_embeddings=CONTEXT,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id),
        vision_config=dict(image_size=IMAGE_SIZE, patch_size=8, hidden_size=128, intermediate_size=512,
                           num_hidden_layers=3, num_attention_heads=4),
        projection_dim=128,
    )
    return CLIPModel(config)


def image_processor(size: int = IMAGE_SIZE) -> CLIPImageProcessor:
    # the whole image squashed to a square, not a centre crop: demo pages have aspect ratios up to 3,
    # and a crop would cut away the very shapes the caption names
    return CLIPImageProcessor(size={"height": size, "width": size}, do_center_crop=False)


def train(out: Path, steps: int, batch_size: int, seed: int, threads: int, init: Path | None = None,
          lr: float = 2e-3) -> dict:
    """Train from scratch, or (`init`) go on training a saved demo CLIP, e.g. after the renderer changed."""
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(seed)
    if init is None:
        tokenizer = build_tokenizer(rng, vocab_size=2048)
        model = build_model(tokenizer)
    else:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(init)
        model = CLIPModel.from_pretrained(init)
    processor = image_processor()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    schedule = cosine_with_warmup(optimizer, steps)
    model.train()
    started = time.time()
    losses = []
    for step in range(steps):
        images, texts = zip(*(sample_pair(rng) for _ in range(batch_size)), strict=True)
        pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]
        tokens = tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
        out_ = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixels,
                     return_loss=True)
        losses.append(clipped_step(model, optimizer, schedule, out_.loss))
        if step % 50 == 0 or step == steps - 1:
            log.warning("step %d/%d loss %.3f (%.0f s)", step, steps, np.mean(losses[-50:]), time.time() - started)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    processor.save_pretrained(out)
    return {"steps": steps, "batch_size": batch_size, "init": str(init) if init else None, "lr": lr,
            "final_loss": float(np.mean(losses[-50:])),
            "seconds": round(time.time() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch-size", type=int, default=160)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--init", type=Path, help="go on training this saved demo CLIP instead of starting afresh")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (cosine schedule, 5%% warm-up)")
    args = parser.parse_args()
    logging.basicConfig(format="%(asctime)s %(message)s")
    print(train(args.out, args.steps, args.batch_size, args.seed, args.threads, args.init, args.lr))


if __name__ == "__main__":
    main()
