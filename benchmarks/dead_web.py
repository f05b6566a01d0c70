"""A real URL table whose hosts are dead: `tailor annotate` vs the `img2dataset` command.

The first --rows rows of shared/data/alt-text/alt_text_10k.parquet (real LAION-style alt-texts; none
of their hosts resolves on these machines, and the table holds no IP-literal URL), 32 threads,
timeout 2 s, no retries (--retries N: N for both tools), embed off; whole-command wall, alternated, medians of --rounds.
Both run under the loopback-only socket guard (network_guard.py): the machine's own resolver is
the only thing ever asked, and no connection can leave the machine.

    python benchmarks/dead_web.py --rows 1000 --rounds 3
"""

from __future__ import annotations

import argparse
import collections
import ipaddress
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
from network_guard import install_network_guard

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ALT_TEXT = ROOT.parent / "shared" / "data" / "alt-text" / "alt_text_10k.parquet"


def url_table(rows: int, out: Path) -> tuple[Path, int]:
    table = pq.read_table(ALT_TEXT).slice(0, rows)
    urls = table.column("URL").to_pylist()
    hosts = set()
    for url in urls:
        host = urlsplit(url).hostname or ""
        try:
            ipaddress.ip_address(host)
            raise SystemExit(f"refusing a table with an IP-literal URL: {url}")
        except ValueError:
            hosts.add(host)
    pq.write_table(pa.table({"url": urls, "caption": table.column("TEXT")}), out)
    return out, len(hosts)


def run(cmd: list[str]) -> float:
    started = time.time()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        raise RuntimeError(f"{cmd[0]} failed: {done.stderr[-2000:]}")
    return time.time() - started


def tailor(urls: Path, out: Path, retries: int) -> tuple[float, dict]:
    shutil.rmtree(out, ignore_errors=True)
    wall = run([str(BIN / "tailor"), "annotate", "--config", str(ROOT / "pipelines/configs/demo.yaml"),
                "--input", str(urls), "--output", str(out), "--no-progress", "--set", "embed=null",
                "--set", "download.allow_networks=[]", "--set", "decode.image_size=256",
                "--set", "download.threads=32", "--set", "download.timeout=2", "--set", f"download.retries={retries}"])
    return wall, json.loads((out / "run.json").read_text())["status_counts"]


def img2dataset(urls: Path, out: Path, retries: int) -> tuple[float, dict]:
    shutil.rmtree(out, ignore_errors=True)
    wall = run([str(BIN / "img2dataset"), "--url_list", str(urls), "--input_format", "parquet", "--url_col", "url",
                "--caption_col", "caption", "--output_format", "webdataset", "--output_folder", str(out),
                "--image_size", "256", "--resize_mode", "keep_ratio", "--processes_count", "2",
                "--thread_count", "32", "--timeout", "2", "--retries", str(retries), "--distributor", "multiprocessing",
                "--enable_wandb", "False"])
    counts = collections.Counter()
    for stats in out.glob("*_stats.json"):
        data = json.loads(stats.read_text())
        counts["ok"] += data["successes"]
        counts["failed"] += data["failed_to_download"] + data["failed_to_resize"]
    return wall, dict(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--retries", type=int, default=0, help="extra attempts per URL, for both tools")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".work")
    args = parser.parse_args()
    os.environ["TAILOR_NETGUARD_DNS"] = "resolver"  # lookups reach this machine's resolver; connections don't
    guard = install_network_guard(args.work)
    urls, hosts = url_table(args.rows, args.work / f"dead-{args.rows}.parquet")
    print(f"{args.rows} rows over {hosts} host names", flush=True)
    results: dict = {"rows": args.rows, "hosts": hosts, "retries": args.retries, "rounds": []}
    for _ in range(args.rounds):
        wall_t, counts_t = tailor(urls, args.work / "dead-tailor", args.retries)
        wall_i, counts_i = img2dataset(urls, args.work / "dead-img2dataset", args.retries)
        results["rounds"].append({"tailor_s": round(wall_t, 1), "tailor": counts_t,
                                  "img2dataset_s": round(wall_i, 1), "img2dataset": counts_i})
        print(json.dumps(results["rounds"][-1]), flush=True)
    results["tailor_median_s"] = statistics.median(r["tailor_s"] for r in results["rounds"])
    results["img2dataset_median_s"] = statistics.median(r["img2dataset_s"] for r in results["rounds"])
    results["ratio"] = round(results["img2dataset_median_s"] / results["tailor_median_s"], 2)
    print(f"tailor {results['tailor_median_s']} s, img2dataset {results['img2dataset_median_s']} s: "
          f"{results['ratio']}x", flush=True)
    refused = guard.read_text().splitlines()
    if refused:
        raise SystemExit("network guard refused non-loopback traffic:\n" + "\n".join(refused))
    (args.work / "dead_web.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
