"""Embed stage throughput: the Ray Data actor-pool stage vs a plain loop of the same model.

Both consume the same preprocessed batches (pixel_values, input_ids built once up front by the
CPU preprocessing operator) and run the same `ClipEmbedder`; the ratio says what the Ray Data
wiring costs around the model. Run for the demo CLIP (tiny: overhead-dominated) and for a randomly
initialised ViT-B/32-shaped CLIP (compute-dominated).

    python benchmarks/embed_stage.py --rows 2048
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from network_guard import install_network_guard  # noqa: E402


def preprocessed_rows(model_path: str, rows: int) -> pa.Table:
    from operators.embed import ClipPreprocessor
    from pipelines.demo.web import world
    from pipelines.demo.web.render import flatten, render_image

    rng = np.random.default_rng(0)
    images, captions = [], []
    for _ in range(rows):
        concept = world.CONCEPTS[int(rng.integers(len(world.CONCEPTS)))]
        buf = io.BytesIO()
        flatten(render_image([concept], 256, 192, rng)).save(buf, "JPEG", quality=90)
        images.append(buf.getvalue())
        captions.append(world.make_caption(rng, [concept]).text)
    table = pa.table({"key": [str(i) for i in range(rows)], "status": ["ok"] * rows, "caption": captions,
                      "image": images})
    return ClipPreprocessor(model_path)(table).drop_columns(["image"])


def plain_loop(model_path: str, table: pa.Table, batch_size: int) -> float:
    from operators.embed import ClipEmbedder, EmbedOptions

    embedder = ClipEmbedder(model_path, EmbedOptions(batch_size=batch_size))
    embedder(table.slice(0, batch_size))  # warm-up, as the actor's first batch
    started = time.perf_counter()
    for start in range(0, table.num_rows, batch_size):
        embedder(table.slice(start, batch_size))
    return time.perf_counter() - started


def ray_stage(model_path: str, table: pa.Table, batch_size: int) -> tuple[float, float]:
    import ray

    from operators.embed import ClipEmbedder, EmbedOptions

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, ignore_reinit_error=True)
    ray.data.DataContext.get_current().enable_progress_bars = False
    source = ray.data.from_arrow([table.slice(s, 256) for s in range(0, table.num_rows, 256)])
    source = source.materialize()
    started = time.perf_counter()
    ds = source.map_batches(ClipEmbedder, batch_size=batch_size, batch_format="pyarrow", concurrency=1,
                            num_cpus=os.cpu_count(), fn_constructor_kwargs={"model_path": model_path,
                                                               "options": EmbedOptions(batch_size=batch_size)})
    rows = sum(b.num_rows for b in ds.iter_batches(batch_format="pyarrow", batch_size=None))
    total = time.perf_counter() - started
    assert rows == table.num_rows
    stats = ds.stats()
    ray.shutdown()
    # the actor's model load is a one-off per actor; report the steady state from the operator's task time
    # time spent inside the actor's batch calls: the steady state, without the one-off model load
    section = stats[stats.index("ClipEmbedder"):]
    task_line = next(line for line in section.splitlines() if "Remote wall time" in line)
    return total, _seconds(task_line.split(",")[-1].split()[0])


def _seconds(text: str) -> float:
    """'68.95us' / '12.3ms' / '4.5s' as seconds (Ray Data's stats format)."""
    for unit, scale in (("us", 1e-6), ("ms", 1e-3), ("s", 1.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    raise ValueError(f"unknown duration {text!r}")


def standard_clip(folder: Path) -> str:
    import torch
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

    from pipelines.models import resolve_model

    torch.manual_seed(0)
    CLIPModel(CLIPConfig()).save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_model("builtin:demo-clip")).save_pretrained(folder)
    CLIPImageProcessor().save_pretrained(folder)
    return str(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--models", nargs="*", default=["demo", "vit-b-32"])
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    guard_log = install_network_guard(ROOT / "benchmarks" / ".work")
    from pipelines.models import resolve_model

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            path = resolve_model("builtin:demo-clip") if name == "demo" else standard_clip(Path(tmp) / name)
            rows = args.rows if name == "demo" else max(256, args.rows // 4)
            table = preprocessed_rows(path, rows)
            loop = plain_loop(path, table, args.batch_size)
            total, busy = ray_stage(path, table, args.batch_size)
            results[name] = {"rows": rows, "plain_loop_rows_per_s": round(rows / loop, 1),
                             "ray_stage_rows_per_s_incl_actor_start": round(rows / total, 1),
                             "ray_stage_rows_per_s_in_actor": round(rows / busy, 1),
                             "ratio_in_actor": round(loop / busy, 3), "ratio_incl_actor_start": round(loop / total, 3)}
            print(name, json.dumps(results[name]), flush=True)
    out = ROOT / "benchmarks" / ".work"
    out.mkdir(parents=True, exist_ok=True)
    (out / "embed_stage.json").write_text(json.dumps(results, indent=2))
    refused = guard_log.read_text().splitlines()
    if refused:
        raise SystemExit("network guard refused non-loopback traffic:\n" + "\n".join(refused))


if __name__ == "__main__":
    main()
