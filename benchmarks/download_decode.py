"""Download + decode + resize throughput: `tailor annotate` vs the `img2dataset` command.

Both run on the same local web (served on 127.0.0.1), the same cores and matching settings
(keep_ratio 256, JPEG quality 95, 32 threads, 2 workers, timeout 10 s, no retries), alternated,
`--rounds` times each; the ratio is of the medians. Each command's wall time includes its own
start-up. Two webs: real photos (photo_web.py: JPEG variants of the COCO photos in shared/data,
served by a ThreadingHTTPServer with a raised backlog and by the plain `python -m http.server`)
and the demo web (only its ordinary image pages: the hostile ones include redirects to private
addresses, which img2dataset would follow off this machine).

    python benchmarks/download_decode.py --n 5000                     # both webs, both servers
    python benchmarks/download_decode.py --web photos --server plain  # one of them
    python benchmarks/download_decode.py --memory 10000 50000         # peak memory vs rows (tailor only)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from network_guard import install_network_guard

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
def build_web(work: Path, n: int, seed: int) -> Path:
    from pipelines.demo.web.build import build_demo_web

    web = work / f"web-{n}-{seed}"
    if not (web / "truth.parquet").exists():
        started = time.time()
        build_demo_web(web, n=n, seed=seed, min_size=256, max_size=1600)
        print(f"built demo web of {n} pages in {time.time() - started:.0f} s", flush=True)
    return web


def image_rows(web: Path, repeat: int = 1) -> pa.Table:
    urls = pq.read_table(web / "urls.parquet")
    truth = pq.read_table(web / "truth.parquet", columns=["demo_id", "hostile"]).to_pylist()
    truth = {r["demo_id"]: r["hostile"] for r in truth}
    keep = pa.array([truth[d] is None for d in urls.column("demo_id").to_pylist()])
    table = urls.filter(keep)
    if repeat > 1:
        tables = [table.set_column(0, "demo_id", pa.array([f"{d}-{i}" for d in table.column("demo_id").to_pylist()]))
                  for i in range(repeat)]
        table = pa.concat_tables(tables)
    return table


class PeakRSS:
    """Peak resident memory of a process tree (the driver and every process it started), sampled."""

    def __init__(self, pid: int):
        self.pid, self.peak_total, self.peak_root = pid, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    ppid = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(entry))
        tree, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo.extend(children.get(pid, []))
        return tree

    @staticmethod
    def _rss(pid: int) -> int:
        try:
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_root = max(self.peak_root, self._rss(self.pid))
            self.peak_total = max(self.peak_total, sum(self._rss(p) for p in self._tree()))
            time.sleep(0.5)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_timed(cmd: list[str]) -> tuple[float, PeakRSS]:
    started = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    with PeakRSS(proc.pid) as peak:
        _, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"{cmd[0]} failed: {err[-2000:]}")
    return time.time() - started, peak


def run_tailor(urls: Path, out: Path, rows_per_shard: int) -> tuple[float, PeakRSS, int]:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(BIN / "tailor"), "annotate", "--config", str(ROOT / "pipelines/configs/demo.yaml"),
           "--input", str(urls), "--output", str(out), "--no-progress",
           "--set", f"input.rows_per_shard={rows_per_shard}", "--set", "download.timeout=10",
           "--set", "download.retries=0", "--set", "download.threads=32", "--set", "ray.batch_size=128",
           "--set", "decode.resize_mode=keep_ratio", "--set", "decode.image_size=256",
           "--set", "decode.encode_quality=95", "--set", "embed=null"]  # download + decode only
    wall, peak = run_timed(cmd)
    ok = json.loads((out / "run.json").read_text())["status_counts"].get("ok", 0)
    return wall, peak, ok


def run_img2dataset(urls: Path, out: Path) -> tuple[float, PeakRSS, int]:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(BIN / "img2dataset"), "--url_list", str(urls), "--input_format", "parquet", "--url_col", "url",
           "--caption_col", "caption", "--output_format", "webdataset", "--output_folder", str(out),
           "--image_size", "256", "--resize_mode", "keep_ratio", "--encode_quality", "95",
           "--processes_count", "2", "--thread_count", "32", "--timeout", "10", "--retries", "0",
           "--number_sample_per_shard", "1000", "--distributor", "multiprocessing", "--enable_wandb", "False"]
    wall, peak = run_timed(cmd)
    ok = sum(json.loads(p.read_text())["successes"] for p in out.glob("*_stats.json"))
    return wall, peak, ok


def compare(urls: Path, args: argparse.Namespace, label: str) -> dict:
    """Alternate tailor and img2dataset over the same URL table; medians of the rounds and their ratio."""
    rows = pq.read_metadata(urls).num_rows
    results: dict = {"web": label, "rows": rows, "cpus": os.cpu_count(), "rounds": []}
    for _ in range(args.rounds):
        wall_t, peak_t, ok_t = run_tailor(urls, args.work / "tailor-run", 1000)
        run = json.loads((args.work / "tailor-run" / "run.json").read_text())
        wall_i, peak_i, ok_i = run_img2dataset(urls, args.work / "img2dataset-out")
        result = {
            "tailor": {"wall_s": round(wall_t, 1), "ok": ok_t, "lost": rows - ok_t,
                       "images_per_s": round(ok_t / wall_t, 1), "peak_rss_mb": peak_t.peak_total >> 20,
                       "stages": run.get("stage_throughput"), "seconds": run.get("seconds")},
            "img2dataset": {"wall_s": round(wall_i, 1), "ok": ok_i, "lost": rows - ok_i,
                            "images_per_s": round(ok_i / wall_i, 1), "peak_rss_mb": peak_i.peak_total >> 20},
        }
        result["ratio"] = round(result["tailor"]["images_per_s"] / result["img2dataset"]["images_per_s"], 2)
        results["rounds"].append(result)
        print(label, json.dumps(result), flush=True)
    for tool in ("tailor", "img2dataset"):
        results[f"{tool}_median_images_per_s"] = statistics.median(r[tool]["images_per_s"] for r in results["rounds"])
        results[f"{tool}_median_wall_s"] = statistics.median(r[tool]["wall_s"] for r in results["rounds"])
    results["ratio_of_medians"] = round(results["tailor_median_images_per_s"]
                                        / results["img2dataset_median_images_per_s"], 2)
    print(f"{label}: tailor {results['tailor_median_images_per_s']} images/s, img2dataset "
          f"{results['img2dataset_median_images_per_s']} images/s: {results['ratio_of_medians']}x", flush=True)
    return results


def throughput(args: argparse.Namespace) -> dict:
    from photo_web import build_photo_web, serve_folder, url_table

    from pipelines.demo.web.serve import DemoWebServer

    results = {}
    if "photos" in args.web:
        folder = build_photo_web(args.work / "photo-web", n=args.n, seed=args.seed)
        for kind in args.server:
            with serve_folder(folder, kind) as base:
                urls = url_table(folder, base, args.work / f"photo-urls-{kind}.parquet", repeat=args.repeat)
                label = f"photos x{args.repeat}" if args.repeat > 1 else "photos"
                results[f"{label}-{kind}".replace(" ", "")] = compare(urls, args, f"{label} ({kind} server)")
    if "demo" in args.web:
        web = build_web(args.work, args.n, args.seed)
        with DemoWebServer(web) as server:
            urls = args.work / "bench-urls.parquet"
            pq.write_table(image_rows(web), urls)
            print(f"{pq.read_metadata(urls).num_rows} demo image pages at {server.base_url}", flush=True)
            results["demo"] = compare(urls, args, "demo web")
    return results


def memory(args: argparse.Namespace) -> dict:
    from pipelines.demo.web.serve import DemoWebServer

    web = build_web(args.work, args.n, args.seed)
    results = {}
    with DemoWebServer(web):
        base = image_rows(web)
        for rows in args.memory:
            repeat = -(-rows // base.num_rows)
            table = image_rows(web, repeat).slice(0, rows)
            urls = args.work / f"mem-{rows}.parquet"
            pq.write_table(table, urls)
            wall, peak, ok = run_tailor(urls, args.work / f"mem-run-{rows}", 1000)
            results[rows] = {"wall_s": round(wall, 1), "ok": ok, "peak_rss_total_mb": peak.peak_total >> 20,
                             "peak_rss_driver_mb": peak.peak_root >> 20}
            print(rows, json.dumps(results[rows]), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5000, help="demo web pages (images 256-1600 px)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--web", nargs="+", default=["photos", "demo"], choices=["photos", "demo"],
                        help="photos: JPEG variants of the COCO photos (photo_web.py); demo: the demo web")
    parser.add_argument("--server", nargs="+", default=["threaded", "plain"], choices=["threaded", "plain"],
                        help="for the photo web: ThreadingHTTPServer with backlog 1024, or `python -m http.server`")
    parser.add_argument("--repeat", type=int, default=1,
                        help="photo web: list every photo this many times under distinct URLs (longer runs)")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".work")
    parser.add_argument("--memory", type=int, nargs="*", help="measure tailor's peak memory at these row counts")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    guard_log = install_network_guard(args.work)
    results = memory(args) if args.memory else throughput(args)
    refused = guard_log.read_text().splitlines()
    if refused:
        raise SystemExit("network guard refused non-loopback traffic:\n" + "\n".join(refused))
    (args.work / ("memory.json" if args.memory else "throughput.json")).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
