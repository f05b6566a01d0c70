"""A local "web" of real photos for download benchmarks: JPEG variants of the COCO photos in shared/data.

Each variant is one of the 80 COCO photos, about 30% of them cropped (60-95% of each side), resized to a
long side of 256-1600 px and saved at JPEG quality 70-95, so sizes, qualities and decode costs spread as
on the web. Two servers, both on 127.0.0.1 and both run in a process of their own (as a real web server
would be, so its CPU is not the benchmark driver's GIL):

    threaded   http.server.ThreadingHTTPServer with a listen backlog of 1024
    plain      `python -m http.server` as a user would start it (ThreadingHTTPServer, backlog 5)

    build_photo_web(folder, n=5000, seed=0) -> urls.parquet (url, caption) beside images/NNNNN.jpg
    with serve_folder(folder, kind="threaded") as base_url: ...
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
COCO = ROOT.parent / "shared" / "data" / "coco-mini"


def coco_photos() -> tuple[list[Path], dict[str, str]]:
    """The COCO photos and one caption per file name."""
    folder = COCO / "train2017"
    if not folder.is_dir():
        raise SystemExit(f"no COCO photos at {folder} (shared/data/coco-mini)")
    photos = sorted(folder.glob("*.jpg"))
    captions: dict[str, str] = {}
    meta = COCO / "captions_train2017.json"
    if meta.exists():
        data = json.loads(meta.read_text())
        names = {img["id"]: img["file_name"] for img in data["images"]}
        for ann in data["annotations"]:
            captions.setdefault(names.get(ann["image_id"], ""), ann["caption"].strip())
    return photos, captions


def build_photo_web(folder: Path, n: int = 5000, seed: int = 0) -> Path:
    """n JPEG variants of the COCO photos in folder/images and folder/urls.parquet (relative URLs filled at serve)."""
    from PIL import Image

    done = folder / "variants.parquet"
    if done.exists() and pq.read_metadata(done).num_rows == n:
        return folder
    (folder / "images").mkdir(parents=True, exist_ok=True)
    photos, captions = coco_photos()
    sources = [Image.open(p).convert("RGB") for p in photos]
    rng = np.random.default_rng(seed)
    names, texts, sizes = [], [], []
    started = time.time()
    for i in range(n):
        k = int(rng.integers(len(sources)))
        image = sources[k]
        if rng.random() < 0.3:
            w, h = image.size
            cw, ch = int(w * rng.uniform(0.6, 0.95)), int(h * rng.uniform(0.6, 0.95))
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            image = image.crop((left, top, left + cw, top + ch))
        long_side = int(rng.integers(256, 1601))
        scale = long_side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        variant = image.resize(size, Image.Resampling.BICUBIC)
        name = f"{i:06d}.jpg"
        variant.save(folder / "images" / name, quality=int(rng.integers(70, 96)))
        names.append(name)
        texts.append(captions.get(photos[k].name, photos[k].stem))
        sizes.append((folder / "images" / name).stat().st_size)
    pq.write_table(pa.table({"name": names, "caption": texts, "bytes": sizes}), done)
    print(f"built {n} photo variants ({sum(sizes) / 1e6:.0f} MB) in {time.time() - started:.0f} s", flush=True)
    return folder


def url_table(folder: Path, base_url: str, out: Path, repeat: int = 1) -> Path:
    """The URL table of the web; with repeat > 1 every photo is listed `repeat` times under distinct URLs
    (`?copy=k`, which the servers ignore), for runs long enough that start-up costs amortise."""
    variants = pq.read_table(folder / "variants.parquet")
    names, captions = variants.column("name").to_pylist(), variants.column("caption").to_pylist()
    urls = [f"{base_url}/images/{name}" + (f"?copy={k}" if k else "") for k in range(repeat) for name in names]
    pq.write_table(pa.table({"url": urls, "caption": captions * repeat}), out)
    return out


_THREADED = """
import http.server, sys
class Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass
class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 1024
    daemon_threads = True
server = Server(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_folder(folder: Path, kind: str = "threaded"):
    """Serve folder on 127.0.0.1 in a child process; yields the base URL."""
    if kind == "threaded":
        proc = subprocess.Popen([sys.executable, "-c", _THREADED], cwd=folder, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        port = int(proc.stdout.readline())
    elif kind == "plain":
        port = _free_port()
        proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                                cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            time.sleep(0.1)
    else:
        raise ValueError(f"server kind {kind!r}: threaded or plain")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "benchmarks" / ".work" / "photo-web"
    build_photo_web(target, n=int(os.environ.get("N", "5000")))
