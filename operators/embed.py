"""CLIP-family embeddings and scores: CPU preprocessing, then a model stage that loads once.

`ClipPreprocessor` (CPU): columns in `status`, `image` (stored JPEG), `caption`; adds
`pixel_values` (uint8 bytes, C order, shape (3, H, W): the checkpoint's resize and crop, not yet
rescaled or normalised), `input_ids`, `attention_mask` for ok rows (null elsewhere). It runs
upstream of the model so decoding never starves a GPU, and ships a quarter of the bytes float32
pixels would: the model actor rescales and normalises on its device.

`ClipEmbedder` (model loaded once in `__init__`, meant for an actor pool): consumes those
columns and adds `image_emb`, `text_emb` (L2-normalised, fixed-size lists), `clip_score`
(float32 cosine of the pair, as LAION and DataComp report it), `clip_model`, and one
`probe_<name>` column per configured probe, scored against the image embedding already
computed (no second model pass). Rows that are not ok get nulls.

Any Hugging Face CLIP-family checkpoint that `AutoModel` loads and that has
`get_image_features` / `get_text_features` works (CLIPModel, SiglipModel, ...). Device, dtype,
features, the padding rule of the text tower and the probe prompts' text tower come from operators/clip.py.
"""

from __future__ import annotations

import io
import logging
import warnings
from typing import Literal

import numpy as np
import pyarrow as pa
from PIL import Image
from pydantic import Field, model_validator

from operators import status as st
from operators.clip import (
    ClipTextTower,
    image_features,
    pads_to_context,
    pick_device,
    pick_dtype,
    quiet_model_loading,
    softmax,
    text_context,
    text_features,
)
from operators.options import Options
from operators.table import replace_columns, require_columns

log = logging.getLogger(__name__)

MODEL_INPUTS = ["pixel_values", "input_ids", "attention_mask"]


class ProbeOptions(Options):
    """Text prompts scored against each image embedding.

    With only `positive` prompts: the max cosine to any of them. With `negative` prompts too:
    the softmax probability mass of the positives among all prompts (CLIP zero-shot style).
    """

    positive: list[str] = Field(min_length=1)
    negative: list[str] = []
    temperature: float = Field(100.0, gt=0, description="logit scale for the softmax")


class EmbedOptions(Options):
    model: str = Field("builtin:demo-clip", description="Hugging Face name or local path; builtin:demo-clip")
    batch_size: int = Field(64, gt=0, description="rows per model call")
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_actors: int = Field(1, gt=0, description="model replicas (one GPU each where GPUs exist)")
    cpus_per_actor: float = Field(1.0, gt=0, description="CPUs a model actor reserves when it runs on CPU "
                                  "(torch uses that many threads)")
    storage_dtype: Literal["float16", "float32"] = Field("float16", description="dtype of stored embeddings")
    probes: dict[str, ProbeOptions] = {}

    @model_validator(mode="after")
    def _probe_names(self) -> EmbedOptions:
        for name in self.probes:
            if not name.isidentifier():
                raise ValueError(f"probe name {name!r} must be a plain identifier (it becomes a column name)")
        return self


class ClipPreprocessor:
    """Image processor + tokenizer of the checkpoint; no model weights are loaded."""

    def __init__(self, model_path: str):
        from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

        config = AutoConfig.from_pretrained(model_path)
        self.image_processor = AutoImageProcessor.from_pretrained(model_path)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.context = text_context(config)
        self.pad_to_max = pads_to_context(config)  # else the embedder pads each batch to its longest text

    def __call__(self, batch: pa.Table) -> pa.Table:
        require_columns(batch, ("status", "image", "caption"), "CLIP preprocessing")
        n = batch.num_rows
        ok = [s == st.OK for s in batch.column("status").to_pylist()]
        rows = [i for i in range(n) if ok[i]]
        pixels: list[bytes | None] = [None] * n
        ids: list[list[int] | None] = [None] * n
        mask: list[list[int] | None] = [None] * n
        if rows:
            images = batch.column("image").to_pylist()
            captions = batch.column("caption").to_pylist()
            decoded = [Image.open(io.BytesIO(images[i])).convert("RGB") for i in rows]
            values = self.image_processor(images=decoded, return_tensors="np", do_rescale=False,
                                          do_normalize=False)["pixel_values"]
            values = np.clip(np.rint(values), 0, 255).astype(np.uint8)  # resized 8-bit pixels, still integers
            tokens = self.tokenizer([captions[i] or "" for i in rows], truncation=True, max_length=self.context,
                                    padding="max_length" if self.pad_to_max else False)
            for j, i in enumerate(rows):
                pixels[i] = np.ascontiguousarray(values[j]).tobytes()
                ids[i] = tokens["input_ids"][j]
                mask[i] = tokens["attention_mask"][j] if "attention_mask" in tokens else [1] * len(ids[i])
        return replace_columns(batch, {
            "pixel_values": pa.array(pixels, pa.binary()),
            "input_ids": pa.array(ids, pa.list_(pa.int32())),
            "attention_mask": pa.array(mask, pa.list_(pa.int8())),
        })


class ClipEmbedder:
    """Loads the model once; embeds image and text of ok rows in batches of options.batch_size."""

    def __init__(self, model_path: str, options: EmbedOptions):
        import torch
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        self.torch = torch
        self.options = options
        self.device = pick_device(options.device)
        self.dtype = getattr(torch, pick_dtype(options.dtype, self.device))
        quiet_model_loading()
        self.model = AutoModel.from_pretrained(model_path, dtype=self.dtype).to(self.device).eval()
        config = AutoConfig.from_pretrained(model_path)
        vision = getattr(config, "vision_config", config)
        size = int(getattr(vision, "image_size", 224))
        self.pixel_shape = (int(getattr(vision, "num_channels", 3)), size, size)
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.pad_id = int(tokenizer.pad_token_id or 0)
        self.pixel_scale, self.pixel_shift = self._normalisation(model_path)
        self.dim = int(getattr(config, "projection_dim", 0) or self._probe_dim())
        self.store = pa.float16() if options.storage_dtype == "float16" else pa.float32()
        text_tower = ClipTextTower(self.model, tokenizer)
        self.probes = {name: (text_tower.encode(probe.positive + probe.negative), len(probe.positive))
                       for name, probe in options.probes.items()}

    def _normalisation(self, model_path: str):
        """The image processor's rescale and normalise, as x * scale + shift per channel (on the device)."""
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(model_path)
        channels = self.pixel_shape[0]
        factor = float(processor.rescale_factor) if getattr(processor, "do_rescale", True) else 1.0
        if getattr(processor, "do_normalize", True):
            mean = np.broadcast_to(np.asarray(processor.image_mean, dtype=np.float64), (channels,))
            std = np.broadcast_to(np.asarray(processor.image_std, dtype=np.float64), (channels,))
        else:
            mean, std = np.zeros(channels), np.ones(channels)
        scale = self.torch.tensor(factor / std, dtype=self.torch.float32).view(1, channels, 1, 1)
        shift = self.torch.tensor(-mean / std, dtype=self.torch.float32).view(1, channels, 1, 1)
        return scale.to(self.device), shift.to(self.device)

    def _probe_dim(self) -> int:
        """The embedding size, from one model call on a blank image (configs without projection_dim)."""
        with self.torch.inference_mode():
            dummy = self.torch.zeros((1, *self.pixel_shape), dtype=self.dtype, device=self.device)
            return int(image_features(self.model, dummy).shape[-1])

    def _embed(self, pixels: pa.BinaryArray, ids: list[list[int]],
               mask: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        # the values of a freshly taken binary array are one contiguous buffer: view it, don't copy per row
        offsets = np.frombuffer(pixels.buffers()[1], dtype=np.int32)[pixels.offset:pixels.offset + len(pixels) + 1]
        image = np.frombuffer(pixels.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]]
        image = image.reshape(len(pixels), *self.pixel_shape)
        width = max(len(x) for x in ids)
        input_ids = np.full((len(ids), width), self.pad_id, dtype=np.int64)
        attention = np.zeros((len(ids), width), dtype=np.int64)
        for i, (row, m) in enumerate(zip(ids, mask, strict=True)):
            input_ids[i, : len(row)] = row
            attention[i, : len(m)] = m
        with torch.inference_mode():
            with warnings.catch_warnings():  # a read-only view; .to() copies it before any write
                warnings.simplefilter("ignore", UserWarning)
                pixel_values = torch.from_numpy(image).to(self.device, copy=True)  # uint8: 1 byte per value moved
            pixel_values = (pixel_values.float() * self.pixel_scale + self.pixel_shift).to(self.dtype)
            img = image_features(self.model, pixel_values)
            txt = text_features(self.model, torch.from_numpy(input_ids).to(self.device),
                                torch.from_numpy(attention).to(self.device))
        return img.cpu().numpy(), txt.cpu().numpy()

    def _probe_scores(self, image_emb: np.ndarray) -> dict[str, np.ndarray]:
        """Per probe: the max cosine to its positives, or (with negatives) their softmax probability mass."""
        scores = {}
        for name, (bank, n_pos) in self.probes.items():
            cos = image_emb @ bank.T
            if n_pos == len(bank):
                scores[name] = cos.max(axis=1)
            else:
                scores[name] = softmax(self.options.probes[name].temperature * cos, axis=1)[:, :n_pos].sum(axis=1)
        return scores

    def __call__(self, batch: pa.Table) -> pa.Table:
        require_columns(batch, ("status", *MODEL_INPUTS), "CLIP embedding")
        n = batch.num_rows
        statuses = batch.column("status").to_pylist()
        pixels = batch.column("pixel_values").combine_chunks()
        present = pixels.is_valid().to_pylist()
        rows = [i for i in range(n) if statuses[i] == st.OK and present[i]]
        image_emb = np.zeros((n, self.dim), dtype=np.float32)
        text_emb = np.zeros((n, self.dim), dtype=np.float32)
        if rows:
            ids = batch.column("input_ids").to_pylist()
            mask = batch.column("attention_mask").to_pylist()
            step = self.options.batch_size
            for start in range(0, len(rows), step):
                chunk = rows[start:start + step]
                img, txt = self._embed(pixels.take(chunk), [ids[i] for i in chunk], [mask[i] for i in chunk])
                image_emb[chunk], text_emb[chunk] = img, txt
        valid = np.zeros(n, dtype=bool)
        valid[rows] = True
        score = np.einsum("nd,nd->n", image_emb, text_emb)
        columns = {
            "image_emb": self._vectors(image_emb, valid),
            "text_emb": self._vectors(text_emb, valid),
            "clip_score": pa.array(score.astype(np.float32), mask=~valid),
            "clip_model": pa.array([self.options.model if v else None for v in valid], pa.string()),
        }
        for name, values in self._probe_scores(image_emb).items():
            columns[f"probe_{name}"] = pa.array(values.astype(np.float32), mask=~valid)
        return replace_columns(batch.drop_columns([c for c in MODEL_INPUTS if c in batch.column_names]), columns)

    def _vectors(self, values: np.ndarray, valid: np.ndarray) -> pa.Array:
        flat = pa.array(values.astype(self.store.to_pandas_dtype()).ravel(), self.store)
        return pa.FixedSizeListArray.from_arrays(flat, self.dim, mask=pa.array(~valid))
