"""Captions from a vision-language model: named, versioned prompts; batched AutoProcessor + generate.

`Captioner` (model loaded once in `__init__`, meant for an actor pool) takes rows (key, image bytes,
caption = the original alt-text, status) and returns one caption row per input row:

    key, status, error, caption (new), original_caption, model, prompt_id, prompt, generation (JSON),
    batch_seconds, captioned_at

Two kinds of Hugging Face models go through the same path (AutoModelForImageTextToText):

- chat models (LLaVA-, Qwen2-VL-style: the processor has a chat template): the prompt's `instruction`,
  with the alt-text filled in for conditioned prompts, becomes a user turn next to the image; batches
  are left-padded and the prompt tokens are cut off the output;
- captioning models without a chat template (BLIP, GIT, VisionEncoderDecoder such as the demo
  captioner): the image alone, or the prompt's `prefix` as the start of the caption when the model
  takes text (BLIP's conditional captioning). Alt-text-conditioned prompts need a chat model.

Prompts (PromptSpec): plain ("Describe this image."), alt-text conditioned (Altogether / VeCLIP: the
model re-aligns the original alt-text with the image), and length control (MLLM-augmented "text
shearing": the new caption is cut to the original's word count). Each row records the prompt id
(name@version) and the exact prompt text it was given.

Statuses: ok; no_image (the key has no stored image); decode_error (the stored bytes do not open);
no_alt_text (a conditioned or length-controlled prompt, and the row has no alt-text); empty_caption
(the model produced nothing); generation_error (the batch failed in generate, with its message).
"""

from __future__ import annotations

import io
import json
import logging
import time
from datetime import UTC, datetime
from typing import Literal

import numpy as np
import pyarrow as pa
from PIL import Image
from pydantic import Field, model_validator

from operators.clip import pick_device, pick_dtype, quiet_model_loading
from operators.options import Options
from operators.status import DECODE_ERROR, EMPTY_CAPTION, GENERATION_ERROR, NO_ALT_TEXT, NO_IMAGE, OK
from operators.table import require_columns

log = logging.getLogger(__name__)

CAPTION_SCHEMA = pa.schema([
    ("key", pa.string()), ("status", pa.string()), ("error", pa.string()), ("caption", pa.string()),
    ("original_caption", pa.string()), ("model", pa.string()), ("prompt_id", pa.string()),
    ("prompt", pa.string()), ("generation", pa.string()), ("batch_seconds", pa.float32()),
    ("captioned_at", pa.timestamp("ms", tz="UTC")), ("candidates", pa.list_(pa.string())),
])


class PromptSpec(Options):
    """One named prompt. `{alt_text}` in the instruction is replaced by the row's original alt-text."""

    version: int = Field(1, ge=1, description="bump when the wording changes: rows record name@version")
    instruction: str = Field("Describe this image.", description="user turn for chat models")
    prefix: str = Field("", description="caption start for captioning models that take text (BLIP-style)")
    shear: bool = Field(False, description="cut the new caption to the original alt-text's word count")

    @property
    def conditioned(self) -> bool:
        return "{alt_text}" in self.instruction

    @model_validator(mode="after")
    def _placeholders(self) -> PromptSpec:
        stripped = self.instruction.replace("{alt_text}", "")
        if "{" in stripped or "}" in stripped:
            raise ValueError("instruction: the only placeholder is {alt_text} (write other braces as {{ }})")
        return self


BUILTIN_PROMPTS: dict[str, PromptSpec] = {
    "plain": PromptSpec(instruction="Describe this image."),
    "altogether": PromptSpec(instruction=(
        'Here is the original alt-text of this image: "{alt_text}". Rewrite it into one caption that is '
        "true to the image: keep what it gets right, correct what is wrong, add the main visible objects, "
        "and drop what cannot be seen.")),
    "sheared": PromptSpec(instruction="Describe this image.", shear=True),
}


class GenerationOptions(Options):
    max_new_tokens: int | None = Field(None, gt=0, le=1024,
                                       description="default: the checkpoint's generation config, else 40")
    num_beams: int = Field(1, ge=1, le=16)
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int = Field(0, description="sampling seed, set per batch (with do_sample)")
    candidates: int = Field(1, ge=1, le=64, description=(
        "captions generated per image; with more than one, the rescore pass keeps the one the run's CLIP "
        "scores highest (LAION-COCO ranked 40 BLIP captions with CLIP). Beam search widens to at least this"))

    def kwargs(self) -> dict:
        beams = self.num_beams if self.do_sample else max(self.num_beams, self.candidates)
        out = {"num_beams": beams, "do_sample": self.do_sample, "num_return_sequences": self.candidates}
        if self.do_sample:
            out.update(temperature=self.temperature, top_p=self.top_p)
        return out


class CaptionOptions(Options):
    model: str = Field("builtin:demo-captioner", description="Hugging Face name or local path; builtin:NAME")
    engine: Literal["transformers", "vllm", "auto"] = Field(
        "auto", description="auto: vLLM when it is installed and a GPU is there, else transformers")
    prompt: str = Field("plain", description="name of a prompt in `prompts` or a built-in one")
    prompts: dict[str, PromptSpec] = Field({}, description="extra or overriding named prompts")
    generation: GenerationOptions = GenerationOptions()
    batch_size: int = Field(32, gt=0, description="images per generate call")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="auto: bfloat16 on GPU, float32 on CPU")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_actors: int = Field(1, gt=0, description="model replicas (one GPU each where GPUs exist)")
    cpus_per_actor: float = Field(1.0, gt=0, description="CPUs a model actor reserves on CPU (torch threads)")

    def prompt_spec(self) -> PromptSpec:
        known = {**BUILTIN_PROMPTS, **self.prompts}
        if self.prompt not in known:
            raise ValueError(f"prompt {self.prompt!r} is not defined (known: {', '.join(sorted(known))})")
        return known[self.prompt]

    @property
    def prompt_id(self) -> str:
        return f"{self.prompt}@{self.prompt_spec().version}"

    @model_validator(mode="after")
    def _known_prompt(self) -> CaptionOptions:
        self.prompt_spec()
        return self


def shear(text: str, reference: str | None) -> str:
    """Cut `text` to as many words as `reference` has (at least one)."""
    limit = max(1, len((reference or "").split()))
    return " ".join(text.split()[:limit])


def _clean(text: str) -> str:
    return " ".join(text.split())


def load_processor(model_path: str) -> tuple[object, object, bool, bool]:
    """(processor, tokenizer, takes_text, chat) of a checkpoint.

    A multimodal processor (BLIP, LLaVA, Qwen2-VL, ...) takes images and text; for a checkpoint with only an
    image processor and a tokenizer (VisionEncoderDecoder) AutoProcessor returns the tokenizer, and the image
    processor is loaded on its own. Chat models are those whose processor or tokenizer has a chat template.
    """
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, ProcessorMixin

    processor = AutoProcessor.from_pretrained(model_path)
    takes_text = isinstance(processor, ProcessorMixin)
    tokenizer = processor.tokenizer if takes_text else AutoTokenizer.from_pretrained(model_path)
    if not takes_text:
        processor = AutoImageProcessor.from_pretrained(model_path)
    chat = bool(getattr(processor, "chat_template", None) or getattr(tokenizer, "chat_template", None))
    return processor, tokenizer, takes_text, chat


def check_prompt(spec: PromptSpec, prompt: str, model: str, takes_text: bool, chat: bool) -> None:
    """Refuse a prompt the model cannot be given, in one line."""
    if spec.conditioned and not chat:
        raise ValueError(f"prompt {prompt!r} gives the model the alt-text, which needs a chat model (a processor "
                         f"with a chat template); {model} has none: use a plain prompt")
    if spec.prefix and not takes_text:
        raise ValueError(f"prompt {prompt!r} has a prefix, but {model} takes no text input")


class Captioner:
    """Loads processor and model once; captions the rows of a batch, options.batch_size images per call."""

    def __init__(self, model_path: str, options: CaptionOptions, model_name: str | None = None):
        import torch
        from transformers import AutoModelForImageTextToText

        self.torch = torch
        self.options = options
        self.spec = options.prompt_spec()
        self.model_name = model_name or options.model
        self.device = pick_device(options.device)
        dtype = pick_dtype(options.dtype, self.device)  # auto: bfloat16 on GPU, float32 on CPU (and no CPU float16)
        quiet_model_loading()
        self.model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=getattr(torch, dtype))
        self.model = self.model.to(self.device).eval()
        self.processor, self.tokenizer, self.takes_text, self.chat = load_processor(model_path)
        check_prompt(self.spec, options.prompt, self.model_name, self.takes_text, self.chat)
        if self.chat:
            self.tokenizer.padding_side = "left"  # decoder-only batches: every prompt ends where generation starts
        self.generation = options.generation.kwargs()
        self.generation["max_new_tokens"] = self._max_new_tokens(options.generation.max_new_tokens)
        self.generation_json = json.dumps({**self.generation, "seed": options.generation.seed,
                                           "dtype": dtype, "engine": "transformers"}, sort_keys=True)

    def _max_new_tokens(self, asked: int | None) -> int:
        """The asked length, or the checkpoint's default; never past a (VisionEncoderDecoder) decoder's positions."""
        tokens = asked or getattr(self.model.generation_config, "max_new_tokens", None) or 40
        decoder = getattr(self.model.config, "decoder", None)
        limit = getattr(decoder, "max_position_embeddings", None) if decoder is not None else None
        if limit and tokens >= limit:
            log.warning("max_new_tokens %d exceeds the decoder's %d positions; using %d", tokens, limit, limit - 1)
            tokens = limit - 1
        return int(tokens)

    # ------------------------------------------------------------ prompts

    def prompt_text(self, alt_text: str | None) -> str:
        if self.chat:
            return self.spec.instruction.replace("{alt_text}", _clean(alt_text or ""))
        return self.spec.prefix

    def _model_inputs(self, images: list[Image.Image], prompts: list[str]) -> dict:
        if self.chat:
            texts = [self.processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p}]}],
                add_generation_prompt=True) for p in prompts]
            return self.processor(images=images, text=texts, padding=True, return_tensors="pt")
        if self.spec.prefix:
            return self.processor(images=images, text=prompts, padding=True, return_tensors="pt")
        if self.takes_text:
            return self.processor(images=images, return_tensors="pt")
        return {"pixel_values": self.processor(images=images, return_tensors="pt")["pixel_values"]}

    def _generate(self, images: list[Image.Image], prompts: list[str]) -> list[list[str]]:
        """Per image, its generation.candidates captions (best first for beam search)."""
        torch = self.torch
        inputs = self._model_inputs(images, prompts)
        inputs = {k: (v.to(self.device, self.model.dtype) if torch.is_floating_point(v) else v.to(self.device))
                  for k, v in inputs.items() if hasattr(v, "to")}
        if self.options.generation.do_sample:
            torch.manual_seed(self.options.generation.seed)
        with torch.inference_mode():
            out = self.model.generate(**inputs, **self.generation)
        if self.chat:
            out = out[:, inputs["input_ids"].shape[1]:]  # decoder-only: the prompt comes back first
        texts = [_clean(t) for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]
        k = self.options.generation.candidates
        return [texts[i * k:(i + 1) * k] for i in range(len(images))]

    # ------------------------------------------------------------ rows

    def __call__(self, batch: pa.Table) -> pa.Table:
        require_columns(batch, ("key", "image", "caption"), "captioning")
        n = batch.num_rows
        keys = batch.column("key").to_pylist()
        images = batch.column("image").to_pylist()
        originals = batch.column("caption").to_pylist()
        status = [OK] * n
        error: list[str | None] = [None] * n
        captions: list[str | None] = [None] * n
        candidates: list[list[str] | None] = [None] * n
        prompts: list[str | None] = [None] * n
        decoded: dict[int, Image.Image] = {}
        for i in range(n):
            if images[i] is None:
                status[i], error[i] = NO_IMAGE, "no stored image for this key (its annotation row is not ok)"
                continue
            if (self.spec.conditioned or self.spec.shear) and not (originals[i] or "").strip():
                status[i], error[i] = NO_ALT_TEXT, f"prompt {self.options.prompt!r} needs the original alt-text; " \
                                                   "this row has none"
                continue
            try:
                image = Image.open(io.BytesIO(images[i]))
                image.load()
                decoded[i] = image.convert("RGB")
            except Exception as err:  # noqa: BLE001 - any undecodable payload is a row status
                status[i], error[i] = DECODE_ERROR, f"{type(err).__name__}: {err}"[:500]
                continue
            prompts[i] = self.prompt_text(originals[i])
        started = time.time()
        todo = sorted(decoded)
        size = self.options.batch_size
        for start in range(0, len(todo), size):
            rows = todo[start:start + size]
            try:
                texts = self._generate([decoded[i] for i in rows], [prompts[i] or "" for i in rows])
            except Exception as err:  # noqa: BLE001 - a failed batch becomes row statuses, never a lost row
                log.exception("generate failed for %d rows", len(rows))
                for i in rows:
                    status[i], error[i] = GENERATION_ERROR, f"{type(err).__name__}: {err}"[:500]
                continue
            for i, options in zip(rows, texts, strict=True):
                if self.spec.shear:
                    options = [shear(t, originals[i]) for t in options]
                options = [t for t in dict.fromkeys(options) if t]  # distinct, non-empty, in the model's order
                if options:
                    captions[i] = options[0]
                    candidates[i] = options if self.options.generation.candidates > 1 else None
                else:
                    status[i], error[i] = EMPTY_CAPTION, "the model generated no text"
        seconds = time.time() - started
        now = datetime.now(UTC)
        return pa.table({
            "key": pa.array(keys, pa.string()),
            "status": pa.array(status, pa.string()),
            "error": pa.array(error, pa.string()),
            "caption": pa.array(captions, pa.string()),
            "original_caption": pa.array(originals, pa.string()),
            "model": pa.array([self.model_name] * n, pa.string()),
            "prompt_id": pa.array([self.options.prompt_id] * n, pa.string()),
            "prompt": pa.array(prompts, pa.string()),
            "generation": pa.array([self.generation_json] * n, pa.string()),
            "batch_seconds": pa.array(np.full(n, seconds, dtype=np.float32)),
            "captioned_at": pa.array([now] * n, pa.timestamp("ms", tz="UTC")),
            "candidates": pa.array(candidates, pa.list_(pa.string())),
        }, schema=CAPTION_SCHEMA)
