"""CLIP embeddings: parity with a direct model call, robustness, and the pipeline stage."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import demo_config
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

from operators.decode import DecodeOptions, decode_image
from operators.embed import ClipEmbedder, ClipPreprocessor, EmbedOptions
from pipelines.demo.score import roc_auc
from pipelines.demo.web import world
from pipelines.demo.web.render import flatten, render_image
from pipelines.models import resolve_model
from pipelines.verbs.annotate import annotate

DEMO = resolve_model("builtin:demo-clip")


def _jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _batch(n: int, seed: int = 0, statuses: list[str] | None = None) -> pa.Table:
    rng = np.random.default_rng(seed)
    images, captions = [], []
    for _ in range(n):
        concept = world.CONCEPTS[int(rng.integers(len(world.CONCEPTS)))]
        images.append(_jpeg(flatten(render_image([concept], 160, 120, rng))))
        captions.append(world.make_caption(rng, [concept]).text)
    return pa.table({"key": [f"k{i}" for i in range(n)], "status": statuses or ["ok"] * n,
                     "caption": captions, "image": images})


def _direct(model_path: str, images: list[bytes], captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The reference: the model's own get_image_features / get_text_features, normalised."""
    model = AutoModel.from_pretrained(model_path, dtype=torch.float32).eval()
    processor = AutoImageProcessor.from_pretrained(model_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    pixels = processor(images=[Image.open(io.BytesIO(b)).convert("RGB") for b in images], return_tensors="pt")
    context = model.config.text_config.max_position_embeddings
    tokens = tokenizer(captions, padding=True, truncation=True, max_length=context, return_tensors="pt")
    with torch.inference_mode():
        img = model.get_image_features(pixel_values=pixels["pixel_values"])
        txt = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    img, txt = (x if isinstance(x, torch.Tensor) else x.pooler_output for x in (img, txt))
    return (torch.nn.functional.normalize(img, dim=-1).numpy(), torch.nn.functional.normalize(txt, dim=-1).numpy())


def _embed(model_path: str, batch: pa.Table, **options) -> pa.Table:
    opts = EmbedOptions(model="test", storage_dtype="float32", batch_size=5, **options)
    return ClipEmbedder(model_path, opts)(ClipPreprocessor(model_path)(batch))


def _vectors(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.array(column.to_pylist(), dtype=np.float32)


@pytest.fixture(scope="module")
def standard_clip(tmp_path_factory) -> str:
    """A randomly initialised CLIP of the standard (ViT-B/32) shape, saved as a checkpoint."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("standard-clip")
    CLIPModel(CLIPConfig()).save_pretrained(path)
    AutoTokenizer.from_pretrained(DEMO).save_pretrained(path)  # any tokenizer within the vocabulary works
    CLIPImageProcessor().save_pretrained(path)
    return str(path)


def test_demo_clip_operator_equals_direct_model_call():
    batch = _batch(12)
    out = _embed(DEMO, batch)
    img, txt = _direct(DEMO, batch.column("image").to_pylist(), batch.column("caption").to_pylist())
    assert np.abs(_vectors(out.column("image_emb")) - img).max() < 1e-5
    assert np.abs(_vectors(out.column("text_emb")) - txt).max() < 1e-5
    np.testing.assert_allclose(out.column("clip_score").to_numpy(), (img * txt).sum(1), atol=1e-5)
    assert np.allclose(np.linalg.norm(_vectors(out.column("image_emb")), axis=1), 1, atol=1e-5)
    assert "pixel_values" not in out.column_names and out.column("clip_model").to_pylist() == ["test"] * 12


@pytest.mark.slow
def test_standard_shaped_clip_operator_equals_direct_model_call(standard_clip):
    batch = _batch(6, seed=1)
    out = _embed(standard_clip, batch)
    img, txt = _direct(standard_clip, batch.column("image").to_pylist(), batch.column("caption").to_pylist())
    assert _vectors(out.column("image_emb")).shape == (6, 512)
    assert np.abs(_vectors(out.column("image_emb")) - img).max() < 1e-5
    assert np.abs(_vectors(out.column("text_emb")) - txt).max() < 1e-5


def test_failed_rows_get_nulls_and_empty_batches_pass():
    batch = _batch(4, statuses=["ok", "http_error", "ok", "decode_error"])
    out = _embed(DEMO, batch)
    assert out.column("clip_score").is_null().to_pylist() == [False, True, False, True]
    assert out.column("image_emb").is_null().to_pylist() == [False, True, False, True]
    failed = _embed(DEMO, _batch(3, statuses=["timeout"] * 3))
    assert failed.column("clip_score").null_count == 3
    empty = _embed(DEMO, _batch(3).slice(0, 0))
    assert empty.num_rows == 0 and "clip_score" in empty.column_names


def test_long_and_non_ascii_captions_are_truncated_not_fatal():
    batch = _batch(3)
    captions = ["dog " * 2000, "一只狗 🐶 ünïcödé — Ελληνικά", ""]
    out = _embed(DEMO, batch.set_column(batch.column_names.index("caption"), "caption", pa.array(captions)))
    assert out.column("clip_score").null_count == 0
    assert np.isfinite(out.column("clip_score").to_numpy()).all()


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "I;16", "P", "LA"])
def test_unusual_image_modes_decode_and_embed(mode):
    base = flatten(render_image(["apple"], 120, 90, np.random.default_rng(0)))
    image = base.convert("RGBA").convert(mode) if mode in ("LA", "P") else base.convert(mode)
    if mode == "I;16":
        image = Image.fromarray(np.asarray(base.convert("L")).astype("<u2") * 257)
    buf = io.BytesIO()
    image.save(buf, "TIFF" if mode in ("CMYK", "I;16") else "PNG")
    decoded = decode_image(buf.getvalue(), DecodeOptions(image_size=64))
    assert decoded.status == "ok", decoded.error
    batch = pa.table({"key": ["a"], "status": ["ok"], "caption": ["an apple"], "image": [decoded.image]})
    assert _embed(DEMO, batch).column("clip_score").null_count == 0


def _concept_batch(concepts: list[str], per_concept: int, seed: int = 3) -> pa.Table:
    rng = np.random.default_rng(seed)
    images = [_jpeg(flatten(render_image([c], 160, 120, rng))) for c in concepts for _ in range(per_concept)]
    n = len(images)
    return pa.table({"key": [f"k{i}" for i in range(n)], "status": ["ok"] * n, "caption": ["a photo"] * n,
                     "image": images})


def test_probe_scores_rank_images_by_what_they_show():
    """Properties of the probes, checked against what each image shows (the demo world's concepts), not by
    recomputing the operator's own formula: a positives-only probe is a cosine (in [-1, 1]) that is the
    direct cosine to the prompt's text embedding and ranks dog images above car images; a probe with
    negatives is a probability (in [0, 1]) that ranks the same way; adding a positive never lowers a max."""
    batch = _concept_batch(["dog", "car"], per_concept=6)
    probes = {"animal": {"positive": ["a photo of a dog", "a photo of a cat"],
                         "negative": ["a photo of a car", "a photo of a house"]},
              "dogness": {"positive": ["a photo of a dog"]},
              "dog_or_car": {"positive": ["a photo of a dog", "a photo of a car"]}}
    out = _embed(DEMO, batch, probes=probes)
    dog, car = slice(0, 6), slice(6, 12)
    dogness = out.column("probe_dogness").to_numpy()
    animal = out.column("probe_animal").to_numpy()
    assert ((-1 <= dogness) & (dogness <= 1)).all() and ((0 <= animal) & (animal <= 1)).all()
    assert dogness[dog].min() > dogness[car].max()
    assert animal[dog].min() > animal[car].max() and animal[dog].mean() > 0.5 > animal[car].mean()
    assert (out.column("probe_dog_or_car").to_numpy() >= dogness - 1e-6).all()
    image = _vectors(out.column("image_emb"))
    _, text = _direct(DEMO, [batch.column("image")[0].as_py()], ["a photo of a dog"])
    np.testing.assert_allclose(dogness, image @ text[0], atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["demo", "standard"])
def test_pipeline_embeddings_equal_direct_model_call(ray_local, demo_web, request, tmp_path, model):
    _, web = demo_web
    truth = pq.read_table(web / "truth.parquet").to_pylist()
    first = [t["demo_id"] for t in truth if t["expected_status"] == "ok"][:16]
    urls = pq.read_table(web / "urls.parquet").to_pylist()
    pq.write_table(pa.Table.from_pylist([u for u in urls if u["demo_id"] in first] + urls[-4:]), tmp_path / "u.parquet")
    path = DEMO if model == "demo" else request.getfixturevalue("standard_clip")
    annotate(demo_config(tmp_path / "u.parquet", tmp_path / "run", f"embed.model={path}",
                         "embed.storage_dtype=float32"), progress=False)
    emb = pq.read_table(tmp_path / "run" / "embeddings").sort_by("key")
    images = pq.read_table(tmp_path / "run" / "images").sort_by("key")
    annotations = pq.read_table(tmp_path / "run" / "annotations").sort_by("key")
    ok = annotations.filter(pa.compute.equal(annotations.column("status"), "ok"))
    assert emb.column("key").to_pylist() == images.column("key").to_pylist() == ok.column("key").to_pylist()
    img, txt = _direct(path, images.column("image").to_pylist(), ok.column("caption").to_pylist())
    assert np.abs(_vectors(emb.column("image_emb")) - img).max() < 1e-5
    assert np.abs(_vectors(emb.column("text_emb")) - txt).max() < 1e-5
    np.testing.assert_allclose(ok.column("clip_score").to_numpy(), (img * txt).sum(1), atol=1e-5)
    failed = annotations.filter(pa.compute.not_equal(annotations.column("status"), "ok"))
    assert failed.column("clip_score").null_count == failed.num_rows


@pytest.mark.slow
def test_unloadable_model_is_a_one_line_config_error(ray_local, demo_web, tmp_path):
    from pipelines.core.config import ConfigError

    _, web = demo_web
    with pytest.raises(ConfigError, match="embed.model: cannot load 'no/such-model'"):
        annotate(demo_config(web / "urls.parquet", tmp_path / "run", "embed.model=no/such-model"), progress=False)
    missing = tmp_path / "models" / "mine"
    with pytest.raises(ConfigError, match=f"cannot load '{missing}': no model folder at '{missing}'"):
        annotate(demo_config(web / "urls.parquet", tmp_path / "run", f"embed.model={missing}"), progress=False)
    assert not (tmp_path / "run").exists()  # nothing written: the corrected command is not refused


def test_siglip_through_automodel_equals_direct_call(tmp_path):
    """SigLIP loads through the same AutoModel path; its texts are padded to the full context, as trained."""
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(DEMO)
    config = SiglipConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=2))
    SiglipModel(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    batch = _batch(5, seed=4)
    out = _embed(str(tmp_path), batch)
    model = AutoModel.from_pretrained(tmp_path).eval()
    pixels = AutoImageProcessor.from_pretrained(tmp_path)(
        images=[Image.open(io.BytesIO(b)).convert("RGB") for b in batch.column("image").to_pylist()],
        return_tensors="pt")["pixel_values"]
    tokens = tokenizer(batch.column("caption").to_pylist(), padding="max_length", max_length=16, truncation=True,
                       return_tensors="pt")
    with torch.inference_mode():
        img = model.get_image_features(pixel_values=pixels)
        txt = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    img, txt = (torch.nn.functional.normalize(x if isinstance(x, torch.Tensor) else x.pooler_output, dim=-1).numpy()
                for x in (img, txt))
    assert np.abs(_vectors(out.column("image_emb")) - img).max() < 1e-5
    assert np.abs(_vectors(out.column("text_emb")) - txt).max() < 1e-5


@pytest.mark.slow
def test_demo_clip_separates_matched_from_mismatched_pairs_on_fresh_renders():
    """The issue's check (ROC-AUC >= 0.95 on a demo world the model was not trained on), on enough pairs
    to mean something: 1,200 fresh renders, a fifth with a caption naming another concept, scored by the
    pipeline's operators. (A 400-page demo web holds only about 40 mismatched pairs: its AUC swings by
    several points between seeds.)"""
    rng = np.random.default_rng(424242)
    images, captions, mismatched = [], [], []
    for i in range(1200):
        concepts = [world.sample_concept(rng)]
        if rng.random() < 0.25:
            concepts.append(world.sample_concept(rng, exclude=concepts))
        short = int(rng.integers(64, 400))
        size = (short, int(short * rng.uniform(0.6, 1.6)))
        images.append(_jpeg(flatten(render_image(concepts, *size, rng))))
        wrong = i % 5 == 0
        named = [world.sample_other_concept(rng, concepts)] if wrong else concepts[:1]
        captions.append(world.make_caption(rng, named).text)
        mismatched.append(wrong)
    batch = pa.table({"key": [f"k{i}" for i in range(len(images))], "status": ["ok"] * len(images),
                      "caption": captions, "image": images})
    scores = np.array(_embed(DEMO, batch).column("clip_score").to_pylist())
    flags = np.array(mismatched)
    auc = roc_auc(scores[~flags], scores[flags])
    print(f"demo CLIP ROC-AUC on {flags.sum()} mismatched / {(~flags).sum()} matched fresh pairs: {auc:.3f}")
    assert auc >= 0.95


def test_demo_clip_trainer_continues_at_another_input_size(tmp_path):
    """`train_demo_clip --init ... --image-size 64 --concept-weight 1 --zipf-share 0.5` writes a checkpoint
    that loads like any CLIP and embeds 64 px inputs; resizing keeps the class token's position embedding
    and resamples the patch grid (lr 0: the weights are the resized originals)."""
    from pipelines.demo.train_clip import train

    summary = train(tmp_path / "clip64", steps=2, batch_size=8, seed=0, threads=1, init=Path(DEMO), lr=0.0,
                    image_size=64, concept_weight=1.0, zipf_share=0.5)
    assert summary["image_size"] == 64 and np.isfinite(summary["final_loss"])
    original, resized = AutoModel.from_pretrained(DEMO), AutoModel.from_pretrained(tmp_path / "clip64")
    assert resized.config.vision_config.image_size == 64
    before = original.vision_model.embeddings.position_embedding.weight.detach()
    after = resized.vision_model.embeddings.position_embedding.weight.detach()
    assert before.shape[0] == 1 + 6 * 6 and after.shape[0] == 1 + 8 * 8
    assert torch.equal(before[0], after[0])
    processor = AutoImageProcessor.from_pretrained(tmp_path / "clip64")
    pixels = processor(images=[flatten(render_image(["dog"], 120, 80, np.random.default_rng(0)))],
                       return_tensors="pt")["pixel_values"]
    assert pixels.shape[-2:] == (64, 64)
    with torch.inference_mode():
        emb = resized.get_image_features(pixel_values=pixels)
    emb = emb if isinstance(emb, torch.Tensor) else emb.pooler_output
    assert emb.shape == (1, original.config.projection_dim) and torch.isfinite(emb).all()
