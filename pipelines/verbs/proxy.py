"""A proxy CLIP trained on a subset's WebDataset shards, and its zero-shot accuracy per concept.

DataComp's premise at the scale of one machine: fix the model, the budget (samples seen, batch size, steps,
schedule) and the seed; vary only the data. The model is a transformers CLIPModel built from ProxyConfig
(the demo CLIP's shape by default) with a fixed tokenizer (the demo CLIP's byte-level BPE by default, or any
Hugging Face tokenizer), trained from scratch with the symmetric contrastive loss on the samples a real
trainer would read: the subset's materialized tars (KEY.jpg/.png/.webp + KEY.txt), through `webdataset`.

Plain torch in one process per (subset, seed), run as a Ray task by pipelines/verbs/evaluate.py: a proxy is small,
DDP would only add nondeterminism, and independent jobs spread over a cluster's GPUs (or a laptop's cores)
as tasks. Deterministic on CPU for a given seed and thread count (torch deterministic algorithms, seeded
sampling); on a GPU node the task gets one GPU and uses it.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Sequence
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import Field

from operators.clip import DEFAULT_TEMPLATES, ClipTextTower, image_features, pick_device, text_features
from operators.options import Options
from pipelines.demo.training import clipped_step, cosine_with_warmup
from pipelines.models import resolve_model

log = logging.getLogger(__name__)


class ProxyConfig(Options):
    image_size: int = Field(48, ge=16, description="input side in pixels (images are squashed, not cropped)")
    patch_size: int = Field(8, ge=2)
    width: int = Field(128, ge=16, description="hidden size of both towers")
    vision_layers: int = Field(3, ge=1)
    text_layers: int = Field(3, ge=1)
    heads: int = Field(4, ge=1)
    projection_dim: int = Field(128, ge=8)
    context: int = Field(32, ge=8, description="caption tokens")
    tokenizer: str = Field("builtin:demo-clip", description="tokenizer to load (builtin:NAME, a path or a hub name)")
    image_tower: str = Field("scratch", description=(
        "scratch: both towers trained from scratch (DataComp); or a CLIP checkpoint (builtin:demo-clip, a path) "
        "whose image tower is locked and only a fresh text tower is trained (LiT): minutes instead of hours on "
        "CPU, and the comparison then measures what the captions teach"))
    samples_seen: int = Field(40_000, gt=0, description="training budget, equal for every subset")
    batch_size: int = Field(128, ge=2)
    lr: float = Field(2e-3, gt=0, description="peak learning rate (cosine schedule, 5% warm-up)")
    weight_decay: float = Field(0.05, ge=0)
    seeds: list[int] = Field([0], min_length=1, description="one training run per seed; accuracies are averaged")
    threads: int = Field(2, ge=1, description="torch threads (and CPUs a training task reserves)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    templates: list[str] = Field(list(DEFAULT_TEMPLATES), min_length=1, description="zero-shot prompt templates")

    @property
    def steps(self) -> int:
        return max(1, self.samples_seen // self.batch_size)


def read_shards(urls: Sequence[str]) -> tuple[list[str], list[bytes], list[str]]:
    """(keys, image bytes, captions) of WebDataset tars, in shard order."""
    import webdataset as wds

    def raise_on_error(exn):
        raise exn

    keys, images, captions = [], [], []
    for sample in wds.WebDataset(list(urls), shardshuffle=False, handler=raise_on_error, empty_check=False):
        image = next((sample[ext] for ext in ("jpg", "jpeg", "png", "webp") if ext in sample), None)
        if image is None:
            raise ValueError(f"sample {sample['__key__']} in {sample.get('__url__')} has no image member")
        keys.append(sample["__key__"])
        images.append(image)
        captions.append(sample.get("txt", b"").decode("utf-8"))
    return keys, images, captions


def image_processor(size: int):
    """CLIP's image processor on the whole image squashed to size x size (the demo CLIP's, and every proxy's)."""
    try:  # the PIL backend by name: asking for CLIPImageProcessor without torchvision warns in every worker
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:  # transformers before 5
        from transformers import CLIPImageProcessor

    # not a centre crop: demo pages have aspect ratios up to 3, and a crop would cut away the very shapes
    # the caption names
    return CLIPImageProcessor(size={"height": size, "width": size}, do_center_crop=False)


def pixel_tensor(images: Sequence[bytes | Image.Image], size: int):
    """Squash to size x size, CLIP normalisation: a float32 (N, 3, size, size) tensor."""
    import torch

    processor = image_processor(size)
    decoded = [im if isinstance(im, Image.Image) else Image.open(io.BytesIO(im)).convert("RGB") for im in images]
    out = []
    for start in range(0, len(decoded), 256):
        out.append(torch.from_numpy(np.asarray(
            processor(images=decoded[start:start + 256], return_tensors="np")["pixel_values"], dtype=np.float32)))
    return torch.cat(out) if out else torch.zeros((0, 3, size, size))


def build_model(config: ProxyConfig, tokenizer):
    from transformers import CLIPConfig, CLIPModel

    clip = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=config.width, intermediate_size=4 * config.width,
                         num_hidden_layers=config.text_layers, num_attention_heads=config.heads,
                         max_position_embeddings=config.context, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id),
        vision_config=dict(image_size=config.image_size, patch_size=config.patch_size, hidden_size=config.width,
                           intermediate_size=4 * config.width, num_hidden_layers=config.vision_layers,
                           num_attention_heads=config.heads),
        projection_dim=config.projection_dim)
    return CLIPModel(clip)


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(name))


def locked_model(config: ProxyConfig):
    """A CLIP checkpoint with its image tower frozen and a freshly initialised text tower (seeded by the caller)."""
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(resolve_model(config.image_tower))
    fresh = CLIPModel(model.config)
    model.text_model.load_state_dict(fresh.text_model.state_dict())
    model.text_projection.load_state_dict(fresh.text_projection.state_dict())
    model.logit_scale.data.copy_(fresh.logit_scale.data)
    for p in (*model.vision_model.parameters(), *model.visual_projection.parameters()):
        p.requires_grad_(False)
    return model


def _image_embeddings(model, pixels, device):
    """Unit image embeddings of (N, 3, H, W) pixels, 256 per model call, on device."""
    import torch

    with torch.inference_mode():
        out = [image_features(model, pixels[start:start + 256].to(device)) for start in range(0, len(pixels), 256)]
    return torch.cat(out).clone()


def _contrastive_loss(model, image_emb, input_ids, attention_mask):
    """CLIP's symmetric loss with precomputed (locked) image embeddings."""
    import torch

    text = text_features(model, input_ids, attention_mask)
    logits = model.logit_scale.exp() * image_emb @ text.T
    target = torch.arange(len(text), device=text.device)
    return (torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)) / 2


def train(images: Sequence[bytes], captions: Sequence[str], config: ProxyConfig, seed: int):
    """Train a proxy CLIP on (image, caption) pairs for config.samples_seen samples."""
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)
    device = pick_device(config.device)
    tokenizer = load_tokenizer(config.tokenizer)
    locked = config.image_tower != "scratch"
    model = (locked_model(config) if locked else build_model(config, tokenizer)).to(device)
    size = model.config.vision_config.image_size
    pixels = pixel_tensor(images, size)
    image_emb = _image_embeddings(model, pixels, device) if locked else None
    tokens = tokenizer(list(captions), padding="max_length", truncation=True, max_length=config.context,
                       return_tensors="pt")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=config.weight_decay)
    steps = config.steps
    schedule = cosine_with_warmup(optimizer, steps)
    rng = np.random.default_rng(seed)
    n = len(images)
    batch = min(config.batch_size, n)  # a subset smaller than a batch: every sample, every step
    order, at = rng.permutation(n), 0
    model.train()
    started, losses = time.time(), []
    for _ in range(steps):
        if at + batch > n:
            order, at = rng.permutation(n), 0
        idx = torch.from_numpy(order[at:at + batch].copy())
        at += batch
        ids, mask = tokens["input_ids"][idx].to(device), tokens["attention_mask"][idx].to(device)
        if locked:
            loss = _contrastive_loss(model, image_emb[idx.to(device)], ids, mask)
        else:
            loss = model(input_ids=ids, attention_mask=mask, pixel_values=pixels[idx].to(device), return_loss=True).loss
        losses.append(clipped_step(model, optimizer, schedule, loss))
    seconds = time.time() - started
    model.eval()
    return model, tokenizer, {"steps": steps, "batch_size": batch, "samples_seen": steps * batch, "seed": seed,
                              "final_loss": float(np.mean(losses[-20:])), "train_seconds": round(seconds, 2),
                              "samples_per_s": round(steps * batch / seconds, 1) if seconds else None,
                              "device": device}


def zero_shot(model, tokenizer, images: Sequence[bytes], classes: Sequence[Sequence[str]],
              config: ProxyConfig) -> np.ndarray:
    """Predicted class index per image: argmax cosine against each class's prompt ensemble over its names
    (name and synonyms) and config.templates, as the audit's tagger builds it."""
    import torch

    device = next(model.parameters()).device
    text = torch.from_numpy(ClipTextTower(model, tokenizer).ensemble(classes, config.templates)).to(device)
    size = model.config.vision_config.image_size
    predictions = []
    with torch.inference_mode():
        for start in range(0, len(images), 256):
            image = image_features(model, pixel_tensor(images[start:start + 256], size).to(device))
            predictions.append((image @ text.T).argmax(dim=1).cpu().numpy())
    return np.concatenate(predictions) if predictions else np.zeros(0, dtype=np.int64)
