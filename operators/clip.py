"""What every use of a CLIP-family model shares: device and dtype, image and text features, text encoding
by the checkpoint's padding rule, prompt ensembles, a stable softmax, and stored vectors as a matrix.

Users: operators/embed.py (the run's embeddings and probes), pipelines/verbs/audit.py (concept embeddings),
pipelines/verbs/recaption.py (rescoring new captions), pipelines/verbs/proxy.py (zero-shot accuracy of a proxy) and
pipelines/demo/train_clip.py (the concept loss). Any checkpoint whose model has
`get_image_features` / `get_text_features` works (CLIPModel, SiglipModel, ...).

Text is tokenized one way everywhere (`tokenize`): truncated to the text tower's context
(`max_position_embeddings`) and padded by the checkpoint's rule (`text_padding`): SigLIP towers were
trained on texts padded to the full context and pool the last position, so they need
padding="max_length"; CLIP-style towers mask padding, so the longest text of the batch is enough.

A prompt ensemble (`ensemble_prompts`, `class_means`, `ClipTextTower.ensemble`) embeds every template
filled with every name of a class (its name and its synonyms) and averages the unit vectors, re-normalised.
torch and transformers are imported inside the functions that need them; nothing here imports ray.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from operators.defaults import DEFAULT_TEMPLATES  # noqa: F401  (re-exported)

SIGLIP_TYPES = frozenset({"siglip", "siglip2"})


# ---------------------------------------------------------------- device and dtype

class _UnpaddedInputs:
    """Drops transformers' "We strongly recommend passing in an `attention_mask`" note: a model in an
    operator here gets either the processor's attention mask or, generating from a start token alone, no
    padding at all; the note only repeats in every worker's log."""

    @staticmethod
    def filter(record) -> bool:
        return "passing in an `attention_mask`" not in record.getMessage()


def quiet_model_loading() -> None:
    """In a worker that loads a model: no "Loading weights" bar (one per actor would interleave with tailor's
    progress line) and no padding note (_UnpaddedInputs); transformers' other warnings stay."""
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    logger = logging.getLogger("transformers.modeling_utils")
    if _UnpaddedInputs not in logger.filters:
        logger.addFilter(_UnpaddedInputs)


def pick_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' where torch sees a GPU, else 'cpu'; any other value unchanged."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(dtype: str, device: str) -> str:
    """The torch dtype name to run in: 'auto' is bfloat16 on a GPU and float32 on CPU; float16 on CPU is float32."""
    if dtype == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    if device == "cpu" and dtype == "float16":
        return "float32"  # half precision matmuls are slow or missing on CPUs
    return dtype


# ---------------------------------------------------------------- features

def features(output):
    """The projected embedding of get_image_features / get_text_features (transformers 5: its pooler_output)."""
    return output if hasattr(output, "dim") else output.pooler_output


def image_features(model, pixel_values):
    """Unit-length float32 image embeddings of a batch of pixel values (gradients flow if enabled)."""
    import torch

    return torch.nn.functional.normalize(features(model.get_image_features(pixel_values=pixel_values)).float(),
                                         dim=-1)


def text_features(model, input_ids, attention_mask=None):
    """Unit-length float32 text embeddings of a batch of token ids (gradients flow if enabled)."""
    import torch

    inputs = {"input_ids": input_ids} if attention_mask is None else {"input_ids": input_ids,
                                                                       "attention_mask": attention_mask}
    return torch.nn.functional.normalize(features(model.get_text_features(**inputs)).float(), dim=-1)


# ---------------------------------------------------------------- text: the checkpoint's tokenization

def pads_to_context(config) -> bool:
    """Whether the checkpoint's text tower was trained on texts padded to the full context (SigLIP)."""
    return getattr(config, "model_type", "") in SIGLIP_TYPES


def text_padding(config) -> str | bool:
    """The tokenizer's `padding` for this checkpoint: 'max_length' for SigLIP, True (longest in batch) otherwise."""
    return "max_length" if pads_to_context(config) else True


def text_context(config) -> int:
    """Tokens the checkpoint's text tower reads (its max_position_embeddings; 77 when the config has none)."""
    return int(getattr(getattr(config, "text_config", config), "max_position_embeddings", 77))


def tokenize(tokenizer, texts: Sequence[str], config) -> dict:
    """input_ids (and attention_mask) tensors of texts, truncated to the context and padded by the checkpoint's rule."""
    tokens = tokenizer(list(texts), truncation=True, max_length=text_context(config), padding=text_padding(config),
                       return_tensors="pt")
    return {k: tokens[k] for k in ("input_ids", "attention_mask") if k in tokens}


# ---------------------------------------------------------------- prompt ensembles

def ensemble_prompts(classes: Sequence[Sequence[str]], templates: Sequence[str]) -> tuple[list[str], list[int]]:
    """Every template filled with every name of each class, class by class, and the number of prompts per class."""
    prompts = [template.format(name) for names in classes for name in names for template in templates]
    return prompts, [len(names) * len(templates) for names in classes]


def class_means(unit, counts: Sequence[int]):
    """(C, D) float32: per class, the mean of its consecutive rows of `unit` (a torch tensor), re-normalised."""
    import torch

    if not counts:
        return unit.new_zeros((0, unit.shape[-1]), dtype=torch.float32)
    sums = torch.stack([part.sum(dim=0) for part in unit.double().split(list(counts))])
    return torch.nn.functional.normalize(sums, dim=-1).float()


class ClipTextTower:
    """A CLIP-family model's text tower: texts -> unit vectors, tokenized as the checkpoint was trained."""

    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device

    @classmethod
    def load(cls, model_path: str, device: str = "cpu") -> ClipTextTower:
        """The checkpoint at model_path (a local folder or a Hugging Face name) on device ('auto': a GPU if any)."""
        from transformers import AutoModel, AutoTokenizer

        quiet_model_loading()
        model = AutoModel.from_pretrained(model_path).to(pick_device(device)).eval()
        return cls(model, AutoTokenizer.from_pretrained(model_path))

    def encode(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """(n, D) float32 unit vectors of texts; (0, 0) for no texts."""
        return self._unit(texts, batch_size).numpy()

    def ensemble(self, classes: Sequence[Sequence[str]], templates: Sequence[str]) -> np.ndarray:
        """(C, D) float32: per class, the mean of the prompts of all its names (name and synonyms), re-normalised."""
        prompts, counts = ensemble_prompts(classes, templates)
        return class_means(self._unit(prompts, 256), counts).numpy()

    def _unit(self, texts: Sequence[str], batch_size: int):
        """Unit text embeddings as a float32 CPU tensor, batch_size texts per model call."""
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                tokens = tokenize(self.tokenizer, texts[start:start + batch_size], self.model.config)
                out.append(text_features(self.model, **{k: v.to(self.device) for k, v in tokens.items()}).cpu())
        return torch.cat(out) if out else torch.zeros((0, 0))


# ---------------------------------------------------------------- scores and stored vectors

def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """exp(logits) normalised along axis, computed after subtracting the max (no overflow)."""
    shifted = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


def to_matrix(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A list column of equal-length vectors without nulls (fixed-size, as stored) as an (n, d) float32 matrix."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    flat = np.asarray(column.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    width = column.type.list_size if pa.types.is_fixed_size_list(column.type) else (
        len(flat) // len(column) if len(column) else 0)
    return flat.reshape(len(column), width)
