"""operators/clip.py: the one text tower, its padding rule, prompt ensembles, softmax, stored vectors; and the
two fixes it brought: SigLIP probes padded to the full context, the proxy's zero-shot over names and synonyms."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
import torch
from transformers import AutoModel, AutoTokenizer, CLIPConfig, CLIPModel, PretrainedConfig

from operators.clip import (
    ClipTextTower,
    class_means,
    ensemble_prompts,
    features,
    pick_device,
    pick_dtype,
    softmax,
    text_context,
    text_padding,
    to_matrix,
)
from operators.concepts import Concepts
from operators.embed import ClipEmbedder, EmbedOptions
from pipelines.demo.web.render import flatten, render_image
from pipelines.models import resolve_model

DEMO = resolve_model("builtin:demo-clip")
SIGLIP_CONTEXT = 16


@pytest.fixture(scope="module")
def tiny_siglip(tmp_path_factory) -> str:
    """A randomly initialised SigLIP (context 16) with the demo CLIP's tokenizer, saved as a checkpoint."""
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-siglip")
    tokenizer = AutoTokenizer.from_pretrained(DEMO)
    config = SiglipConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=SIGLIP_CONTEXT,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=2))
    SiglipModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return str(path)


def _direct_text(model_path: str, texts: list[str], padding) -> np.ndarray:
    """The reference: the model's own get_text_features on texts tokenized with `padding`, normalised."""
    model = AutoModel.from_pretrained(model_path).eval()
    tokens = AutoTokenizer.from_pretrained(model_path)(texts, padding=padding, truncation=True,
                                                       max_length=text_context(model.config), return_tensors="pt")
    with torch.inference_mode():
        out = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    return torch.nn.functional.normalize(features(out).float(), dim=-1).numpy()


# ---------------------------------------------------------------- the padding rule (fix 1)

def test_padding_rule_siglip_pads_to_the_full_context_clip_to_the_longest_text():
    assert text_padding(PretrainedConfig.from_dict({"model_type": "siglip"})) == "max_length"
    assert text_padding(PretrainedConfig.from_dict({"model_type": "siglip2"})) == "max_length"
    assert text_padding(CLIPConfig()) is True
    assert text_context(CLIPConfig()) == 77 and text_context(PretrainedConfig()) == 77


def test_siglip_probe_bank_and_text_tower_pad_to_max_length(tiny_siglip):
    """The embedder's probe prompts (once padded to the longest prompt) and the audit/recaption text tower
    both tokenize SigLIP texts padded to its context, as it was trained and as the run's text_emb are."""
    positive, negative = ["a photo of a dog"], ["a photo of a red fire truck on the road"]
    expected = _direct_text(tiny_siglip, positive + negative, "max_length")
    longest = _direct_text(tiny_siglip, positive + negative, True)
    assert np.abs(expected - longest).max() > 1e-3  # the padding rule matters for SigLIP: the test can tell
    embedder = ClipEmbedder(tiny_siglip, EmbedOptions(probes={"dog": {"positive": positive, "negative": negative}}))
    bank, n_pos = embedder.probes["dog"]
    assert n_pos == 1
    np.testing.assert_allclose(bank, expected, atol=1e-5)
    np.testing.assert_allclose(ClipTextTower.load(tiny_siglip).encode(positive + negative), expected, atol=1e-5)


def test_clip_text_is_padded_to_the_longest_text_and_padding_does_not_change_it():
    texts = ["a photo of a dog", "a photo of a red fire truck on the road"]
    tower = ClipTextTower.load(DEMO)
    np.testing.assert_allclose(tower.encode(texts), _direct_text(DEMO, texts, True), atol=1e-5)
    np.testing.assert_allclose(tower.encode(texts), _direct_text(DEMO, texts, "max_length"), atol=1e-5)
    assert tower.encode([]).shape == (0, 0)


# ---------------------------------------------------------------- prompt ensembles and the proxy (fix 2)

def test_ensemble_is_the_mean_over_names_synonyms_and_templates():
    templates = ["a photo of a {}.", "a drawing of a {}."]
    classes = [("dog", "puppy"), ("car",)]
    prompts, counts = ensemble_prompts(classes, templates)
    assert prompts == ["a photo of a dog.", "a drawing of a dog.", "a photo of a puppy.", "a drawing of a puppy.",
                       "a photo of a car.", "a drawing of a car."]
    assert counts == [4, 2]
    unit = _direct_text(DEMO, prompts, True)
    mean = np.stack([unit[:4].mean(0), unit[4:].mean(0)])
    expected = mean / np.linalg.norm(mean, axis=1, keepdims=True)
    np.testing.assert_allclose(ClipTextTower.load(DEMO).ensemble(classes, templates), expected, atol=1e-5)
    np.testing.assert_allclose(class_means(torch.from_numpy(unit), counts).numpy(), expected, atol=1e-6)
    assert class_means(torch.zeros((0, 5)), []).shape == (0, 5)


def _png(concept: str, seed: int) -> bytes:
    buffer = io.BytesIO()
    flatten(render_image([concept], 96, 72, np.random.default_rng(seed))).save(buffer, "PNG")
    return buffer.getvalue()


def test_proxy_zero_shot_averages_over_names_and_synonyms_like_the_audit():
    """A class named by a meaningless word with the synonym "cat": over names only (the proxy before) the demo
    CLIP sends cat images to "dog"; over names and synonyms the proxy predicts what the audit's concept
    embeddings predict, and the cat images go to that class."""
    from pipelines.verbs.audit import AuditOptions, concept_embeddings
    from pipelines.verbs.proxy import ProxyConfig, pixel_tensor, zero_shot

    concepts = Concepts(("qzxv", "dog", "apple", "pizza"), (("cat",), (), (), ()))
    images = [_png(c, seed) for c in ("cat", "dog", "apple", "pizza") for seed in range(3)]
    model, tokenizer = CLIPModel.from_pretrained(DEMO).eval(), AutoTokenizer.from_pretrained(DEMO)
    predicted = zero_shot(model, tokenizer, images, concepts.all_names(), ProxyConfig())

    audit = concept_embeddings(concepts, "builtin:demo-clip", AuditOptions(device="cpu"))
    with torch.inference_mode():
        image = features(model.get_image_features(pixel_values=pixel_tensor(images, 48))).float()
    image = torch.nn.functional.normalize(image, dim=-1).numpy()
    np.testing.assert_array_equal(predicted, (image @ audit.T).argmax(1))
    np.testing.assert_array_equal(predicted, np.repeat(np.arange(4), 3))
    names_only = ClipTextTower(model, tokenizer).ensemble([[n] for n in concepts.names], ProxyConfig().templates)
    assert ((image @ names_only.T).argmax(1)[:3] != 0).any()  # without the synonym a cat image goes elsewhere


# ---------------------------------------------------------------- small shared pieces

def test_softmax_is_stable_for_large_logits():
    logits = np.array([[1000.0, 1000.0, -1000.0], [0.0, np.log(3.0), -np.inf]])
    np.testing.assert_allclose(softmax(logits, axis=1), [[0.5, 0.5, 0.0], [0.25, 0.75, 0.0]], atol=1e-12)
    assert np.isfinite(softmax(np.full((2, 4), 1e30))).all()


def test_to_matrix_reads_fixed_size_lists_sliced_chunked_and_plain():
    values = np.arange(12, dtype=np.float32).reshape(4, 3)
    column = pa.FixedSizeListArray.from_arrays(pa.array(values.ravel().astype(np.float16)), 3)
    np.testing.assert_array_equal(to_matrix(column), values)
    np.testing.assert_array_equal(to_matrix(column.slice(1, 2)), values[1:3])
    np.testing.assert_array_equal(to_matrix(pa.chunked_array([column.slice(0, 1), column.slice(2, 2)])),
                                  values[[0, 2, 3]])
    np.testing.assert_array_equal(to_matrix(pa.array(values.tolist(), pa.list_(pa.float32()))), values)
    assert to_matrix(column.slice(0, 0)).shape == (0, 3) and to_matrix(column).dtype == np.float32


def test_device_and_dtype_choice():
    assert pick_device("cpu") == "cpu" and pick_device("cuda") == "cuda"
    assert pick_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_dtype("float16", "cpu") == "float32" and pick_dtype("float16", "cuda") == "float16"
    assert pick_dtype("auto", "cpu") == "float32" and pick_dtype("auto", "cuda") == "bfloat16"
    assert pick_dtype("bfloat16", "cpu") == "bfloat16"
