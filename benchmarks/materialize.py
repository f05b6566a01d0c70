"""materialize vs. a plain single-process tarfile writer of the same samples.

    python benchmarks/materialize.py --run /tmp/demo/run            # an existing run (its ok rows)
    python benchmarks/materialize.py --synthetic 60000                # a generated run

Results go to WORK/materialize.json (WORK: benchmarks/.work/materialize by default).

The synthetic run has tailor's layout: annotations/SHARD.parquet (10,000 rows per shard, the usual
light columns) and images/SHARD.parquet (row groups of 256, sorted by key) holding incompressible
JPEG-sized payloads (a JPEG signature, then --image-bytes random bytes). The subset keeps a random
--keep fraction of the ok keys, listed in random order.

The baseline is what one would write without tailor: read the manifest, the annotations and the images
with pyarrow (filtered to the kept keys), sort by key, and write the same KEY.jpg/.txt/.json members with
`tarfile`, one process. Both produce byte-identical tars (checked). Ray is started, and its workers warmed up
by one untimed materialize, before timing: the figure is for a running cluster.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def synthetic_run(root: Path, n: int, image_bytes: int, rows_per_shard: int = 10_000, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for d in ("annotations", "images"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text("decode:\n  encode_format: jpg\n")
    for start in range(0, n, rows_per_shard):
        shard = f"00000_{start // rows_per_shard:05d}"
        rows = min(rows_per_shard, n - start)
        keys = [f"00000{start + i:010d}" for i in range(rows)]
        status = np.where(rng.random(rows) < 0.9, "ok", "http_error")
        images = [b"\xff\xd8\xff" + rng.bytes(image_bytes) for _ in range(rows)]
        ann = pa.table({
            "key": keys, "url": [f"https://example.com/{k}.jpg" for k in keys],
            "caption": [f"a photo number {start + i} of a thing" for i in range(rows)],
            "shard": [shard] * rows, "status": status.tolist(),
            "error": [None if s == "ok" else "HTTP 404" for s in status],
            "width": pa.array(rng.integers(64, 512, rows), pa.int32()),
            "height": pa.array(rng.integers(64, 512, rows), pa.int32()),
            "sha256": [hashlib.sha256(b).hexdigest() for b in images],
            "phash": pa.array(rng.integers(0, 2**63, rows), pa.uint64()),
            "clip_score": pa.array(rng.random(rows), pa.float32()),
        })
        pq.write_table(ann, root / "annotations" / f"{shard}.parquet", compression="zstd")
        ok = np.asarray(status) == "ok"
        img = pa.table({"key": [k for k, o in zip(keys, ok, strict=True) if o],
                        "image": pa.array([b for b, o in zip(images, ok, strict=True) if o], pa.binary()),
                        "width": ann.column("width").filter(pa.array(ok)),
                        "height": ann.column("height").filter(pa.array(ok))})
        pq.write_table(img, root / "images" / f"{shard}.parquet", row_group_size=256, compression="zstd")


def write_subset(run: Path, name: str, keep: float, seed: int = 0) -> int:
    ann = pq.read_table(run / "annotations", columns=["key", "status"])
    ok = ann.filter(pc.equal(ann.column("status"), "ok")).column("key").to_numpy(zero_copy_only=False)
    rng = np.random.default_rng(seed)
    kept = ok[rng.random(len(ok)) < keep]
    rng.shuffle(kept)
    (run / "subsets" / name).mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"key": pa.array(kept, pa.string())}), run / "subsets" / name / "manifest.parquet")
    return len(kept)


def baseline(run: Path, name: str, out: Path, per_shard: int) -> int:
    """One process, pyarrow + tarfile: the same members as materialize, written the obvious way."""
    from pipelines.verbs.materialize import TAR_MTIME, image_format, sample_json, scalar_columns

    out.mkdir(parents=True)
    keys = pq.read_table(run / "subsets" / name / "manifest.parquet").column("key").unique()
    ann = pq.read_table(run / "annotations", filters=pc.field("key").isin(keys))
    img = pq.read_table(run / "images", columns=["key", "image"], filters=pc.field("key").isin(keys))
    ann = ann.filter(pc.equal(ann.column("status"), "ok")).sort_by("key")
    img = img.sort_by("key")
    assert ann.column("key").equals(img.column("key"))
    json_columns = scalar_columns(ann.schema)
    rows, images = ann.select(json_columns).to_pylist(), img.column("image").to_pylist()
    for s, start in enumerate(range(0, len(rows), per_shard)):
        with tarfile.open(out / f"{s:05d}.tar", "w", format=tarfile.PAX_FORMAT) as tar:
            for row, image in zip(rows[start:start + per_shard], images[start:start + per_shard], strict=True):
                for name_, data in ((f"{row['key']}.{image_format(image)}", image),
                                    (f"{row['key']}.txt", row["caption"].encode()),
                                    (f"{row['key']}.json", sample_json(row))):
                    info = tarfile.TarInfo(name_)
                    info.size, info.mtime, info.mode = len(data), TAR_MTIME, 0o644
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    tar.addfile(info, io.BytesIO(data))
    return len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="an existing run folder (copied: the subset is written into the copy)")
    parser.add_argument("--synthetic", type=int, help="rows of a generated run")
    parser.add_argument("--image-bytes", type=int, default=12_000)
    parser.add_argument("--keep", type=float, default=0.8)
    parser.add_argument("--samples-per-shard", type=int, default=5000)
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".work" / "materialize")
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    args = parser.parse_args()

    if not args.run and not args.synthetic:
        parser.error("give --run or --synthetic")
    from network_guard import install_network_guard

    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    refused = install_network_guard(work)

    import ray

    from pipelines.verbs.materialize import MaterializeOptions, materialize

    run = work / "run"
    if args.run:
        shutil.copytree(args.run, run)
    else:
        synthetic_run(run, args.synthetic, args.image_bytes)
    kept = write_subset(run, "bench", args.keep if args.synthetic else 1.0)
    ray.init(num_cpus=args.cpus, include_dashboard=False)

    materialize(str(run), "bench", str(work / "warm-up"), MaterializeOptions(samples_per_shard=args.samples_per_shard),
                progress=False)  # Ray workers up
    t = time.time()
    base = baseline(run, "bench", work / "baseline", args.samples_per_shard)
    base_s = time.time() - t
    results = {"samples": base, "kept_keys": kept, "cpus": args.cpus, "baseline_s": round(base_s, 2),
               "baseline_samples_per_s": round(base / base_s, 1)}
    for parquet in (False, True):
        t = time.time()
        summary = materialize(str(run), "bench", str(work / f"tailor-{parquet}"),
                              MaterializeOptions(samples_per_shard=args.samples_per_shard, parquet=parquet),
                              progress=False)
        wall = time.time() - t
        results[f"tailor{'_with_parquet' if parquet else ''}_s"] = round(wall, 2)
        results[f"tailor{'_with_parquet' if parquet else ''}_samples_per_s"] = round(summary["samples"] / wall, 1)
        assert summary["samples"] == base
    tars = sorted((work / "tailor-False").glob("*.tar"))
    results["identical_tars"] = all((work / "baseline" / p.name).read_bytes() == p.read_bytes() for p in tars)
    results["ratio_vs_baseline"] = round(results["baseline_s"] / results["tailor_s"], 2)
    results["output_mb"] = round(sum(p.stat().st_size for p in (work / "tailor-False").glob("*.tar")) / 1e6, 1)
    ray.shutdown()
    assert not refused.read_text(), f"network guard refused traffic: {refused.read_text()}"
    (work / "materialize.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
