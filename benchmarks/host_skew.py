"""A skewed URL table over hosts that defend themselves like CDNs: `tailor annotate` vs the `img2dataset` command.

--rows rows over --hosts loopback hosts (127.0.0.2, 127.0.0.3, ...; tests/host_web.py), as skewed as a real
crawl: `--skew cc3m` gives the busiest hosts CC3M's published shares (13.8, 12.5, 8.5, 3.0, 2.6 %), `--skew
alttext` those of shared/data/alt-text/alt_text_10k.parquet (6.4 % for cdn.shopify.com, ...), the rest Zipf-like.
Every host serves at most --host-concurrency requests at once and admits at most --host-rate in any second,
answering the rest 429 with Retry-After: 1. Images are JPEG variants of the COCO photos (photo_web.py). With
--opt-out-hosts (on by default) the 4th busiest host's robots.txt disallows /img/ for every agent and the
5th sends `tdm-reservation: 1` with its images (and a reserving /.well-known/tdmrep.json): their rows are not
servable, and a compliant crawler ends none of them ok.

The rate bound is what no polite crawler can beat: the busiest servable host's rows / --host-rate. Reported
for each tool: ok rows of the servable ones, ok rows on opted-out hosts, whole-command wall, the fetching
window (first to last request the hosts saw), both over the rate bound, requests, the refused (429) share,
the most requests any host saw in flight, requests per TCP connection. tailor runs the demo config (embed
off) with --tailor-set overrides passed through; img2dataset 2 processes x 32 threads, retries 2, keep_ratio
256, quality 95 (download_decode.py's settings). Alternated, medians of --rounds.

    python benchmarks/host_skew.py                                   # 5000 rows, 60 hosts, CC3M skew
    python benchmarks/host_skew.py --rows 600 --hosts 12 --rounds 1  # a quick check
    python benchmarks/host_skew.py --skew alttext --tailor-set download.host_rate=8 --tailor-set download.max_wait=60
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
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
sys.path.insert(0, str(ROOT / "tests"))
from host_web import (  # noqa: E402
    CC3M_TOP_SHARES,
    DISALLOW_IMG,
    TDMREP_RESERVED,
    HostSpec,
    HostWeb,
    host_shares,
    skewed_hosts,
)

ROBOTS_RANK, TDM_RANK = 3, 4  # host indexes (0 = busiest) of the opted-out hosts


def alttext_shares(n_hosts: int) -> list[float]:
    """The real table's busiest hosts' shares, as many as stay above the rest spread evenly over the other hosts
    (at least the busiest): 60 hosts keep 6.41, 1.96 and 1.94 %, the other 57 share 89.7 %."""
    urls = pq.read_table(ALT_TEXT, columns=["URL"]).column("URL").to_pylist()
    counts = collections.Counter(urlsplit(u).hostname for u in urls)
    shares = [c / len(urls) for _, c in counts.most_common()]
    top: list[float] = []
    for k, share in enumerate(shares[:n_hosts - 1]):
        if top and share < (1 - sum(top) - share) / max(1, n_hosts - k - 1):
            break
        top.append(share)
    return top


def photos(work: Path, n: int, seed: int) -> tuple[list[bytes], list[str]]:
    from photo_web import build_photo_web

    folder = build_photo_web(work / "host-skew-photos", n=n, seed=seed)
    variants = pq.read_table(folder / "variants.parquet").to_pylist()
    return [(folder / "images" / v["name"]).read_bytes() for v in variants], [v["caption"] for v in variants]


def host_specs(args: argparse.Namespace) -> tuple[list[HostSpec], dict[str, str]]:
    """The hosts (busiest first) and the opted-out ones: address -> how."""
    specs = [HostSpec(f"127.0.0.{2 + h}", concurrency=args.host_concurrency, rate=args.host_rate, retry_after="1",
                      latency=args.latency) for h in range(args.hosts)]
    opted: dict[str, str] = {}
    if args.opt_out_hosts:
        robots, tdm = (ROBOTS_RANK, TDM_RANK) if args.hosts > TDM_RANK else (args.hosts - 2, args.hosts - 1)
        specs[robots].robots = DISALLOW_IMG
        specs[tdm].tdm_header, specs[tdm].tdmrep = True, TDMREP_RESERVED
        opted = {specs[robots].address: "robots.txt", specs[tdm].address: "tdm-reservation"}
    return specs, opted


def run(cmd: list[str], timeout: float, env: dict | None = None, cwd: Path | None = None) -> dict:
    """Run a tool in a process group of its own; wall, exit code and, when it failed, its stderr's tail."""
    started = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=env, cwd=cwd)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # tailor stops its local Ray on SIGTERM
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
        err = f"{err}\n[host_skew: killed after {timeout:.0f} s]"
    result = {"wall_s": round(time.time() - started, 1), "rc": proc.returncode}
    if proc.returncode:
        result["stderr_tail"] = err[-3000:]
        print(f"{Path(cmd[0]).name} failed (exit {proc.returncode}):\n{err[-3000:]}", file=sys.stderr, flush=True)
    return result


def tailor(urls: Path, out: Path, args: argparse.Namespace) -> tuple[dict, dict[str, str], collections.Counter]:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(BIN / "tailor"), "annotate", "--config", "demo", "--input", str(urls), "--output", str(out),
           "--set", "embed=null", "--set", 'download.allow_networks=["127.0.0.0/8"]', "--no-progress"]
    for override in args.tailor_set:
        cmd += ["--set", override]
    env = cwd = None
    if args.tailor_src:  # another checkout's pipelines/ and operators/ ahead of this one's; run from there, as
        # Ray puts the driver's working directory on its workers' sys.path
        cwd = args.tailor_src.resolve()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(cwd)])))
    result = run(cmd, args.timeout, env, cwd)
    statuses: dict[str, str] = {}
    lost_to_429 = collections.Counter()
    if (out / "annotations").is_dir():
        for row in pq.read_table(out / "annotations", columns=["url", "status", "http_status"]).to_pylist():
            statuses[row["url"]] = row["status"]
            if row["status"] != "ok" and row["http_status"] in (429, 503):
                lost_to_429[row["http_status"]] += 1
    if (out / "run.json").exists():
        result["status_counts"] = json.loads((out / "run.json").read_text()).get("status_counts")
    return result, statuses, lost_to_429


def img2dataset(urls: Path, out: Path, args: argparse.Namespace) -> tuple[dict, dict[str, str], collections.Counter]:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(BIN / "img2dataset"), "--url_list", str(urls), "--input_format", "parquet", "--url_col", "url",
           "--caption_col", "caption", "--output_format", "webdataset", "--output_folder", str(out),
           "--image_size", "256", "--resize_mode", "keep_ratio", "--encode_quality", "95",
           "--processes_count", "2", "--thread_count", "32", "--timeout", "10", "--retries", "2",
           "--number_sample_per_shard", "1000", "--distributor", "multiprocessing", "--enable_wandb", "False"]
    result = run(cmd, args.timeout)
    statuses: dict[str, str] = {}
    lost_to_429 = collections.Counter()
    for part in sorted(out.glob("*.parquet")):
        for row in pq.read_table(part, columns=["url", "status", "error_message"]).to_pylist():
            statuses[row["url"]] = "ok" if row["status"] == "success" else row["status"]
            for code in (429, 503):
                if row["status"] != "success" and f"Error {code}" in (row["error_message"] or ""):
                    lost_to_429[code] += 1
    result["status_counts"] = dict(collections.Counter(statuses.values()))
    return result, statuses, lost_to_429


def measure(web: HostWeb, result: dict, statuses: dict[str, str], lost: collections.Counter, table: dict) -> dict:
    """What the hosts saw and what the tool kept, against the table's servable rows and its rate bound."""
    opted, hosts_of = table["opted"], table["host_of_url"]
    ok = collections.Counter(hosts_of[u] for u, s in statuses.items() if s == "ok" and u in hosts_of)
    ok_servable = sum(n for a, n in ok.items() if a not in opted)
    logs = [r for a in web.addresses for r in web.log(a)]
    requests, refused = len(logs), sum(web.refused(a) for a in web.addresses)
    connections = sum(web.connections(a) for a in web.addresses)
    fetch_s = max(r.time for r in logs) - min(r.time for r in logs) if logs else 0.0
    bound = table["rate_bound_s"]
    m = {
        "ok_servable": ok_servable,
        "ok_share": round(ok_servable / table["servable"], 3) if table["servable"] else None,
        "opted_out_ok": sum(n for a, n in ok.items() if a in opted),
        "lost_to_throttle": sum(lost.values()),
        "wall_s": result["wall_s"],
        "fetch_s": round(fetch_s, 1),
        "wall_over_bound": round(result["wall_s"] / bound, 2) if bound else None,
        "fetch_over_bound": round(fetch_s / bound, 2) if bound else None,
        "requests": requests,
        "refused_share": round(refused / requests, 3) if requests else None,
        "max_inflight": max((web.max_inflight(a) for a in web.addresses), default=0),
        "requests_per_connection": round(requests / connections, 2) if connections else None,
        "opt_out_file_requests": sum(1 for r in logs if r.path.split("?")[0] in
                                     ("/robots.txt", "/.well-known/tdmrep.json")),
        "rc": result["rc"],
    }
    busiest = max((a for a in web.addresses if a not in opted), key=lambda a: len(web.log(a)), default=None)
    if busiest is not None and web.log(busiest):
        times = sorted(r.time for r in web.log(busiest))
        gaps = [b - a for a, b in zip(times, times[1:], strict=False) if b - a > 0.3]
        start = min(r.time for r in logs)
        # where the busiest host's time went: its first request after the run's first, its own window, idle gaps
        m["busiest"] = {"host": busiest, "requests": len(times), "starts_after_s": round(times[0] - start, 1),
                        "window_s": round(times[-1] - times[0], 1), "refused": web.refused(busiest),
                        "gaps_over_0.3s": len(gaps), "gap_s": round(sum(gaps), 1),
                        "ends_before_last_s": round(max(r.time for r in logs) - times[-1], 1)}
    for key in ("status_counts", "stderr_tail"):
        if key in result:
            m[key] = result[key]
    return m


ROWS = [("ok / servable", lambda m, t: f"{m['ok_servable']}/{t['servable']} ({m['ok_share']:.1%})"
         if m["ok_share"] is not None else "-"),
        ("ok on opted-out hosts", lambda m, t: f"{m['opted_out_ok']}/{t['opted_out_rows']}"),
        ("rows lost to 429/503", lambda m, t: str(m["lost_to_throttle"])),
        ("wall s (command)", lambda m, t: f"{m['wall_s']:.1f}"),
        ("fetch window s", lambda m, t: f"{m['fetch_s']:.1f}"),
        ("wall / rate bound", lambda m, t: f"{m['wall_over_bound']}"),
        ("fetch / rate bound", lambda m, t: f"{m['fetch_over_bound']}"),
        ("requests", lambda m, t: str(m["requests"])),
        ("refused share", lambda m, t: f"{m['refused_share']:.1%}" if m["refused_share"] is not None else "-"),
        ("max in flight (any host)", lambda m, t: str(m["max_inflight"])),
        ("requests / connection", lambda m, t: str(m["requests_per_connection"])),
        ("robots/tdmrep requests", lambda m, t: str(m["opt_out_file_requests"])),
        ("exit code", lambda m, t: str(m["rc"]))]


def print_table(summary: dict, table: dict) -> None:
    tools = list(summary)
    width = max(len(name) for name, _ in ROWS) + 2
    print(f"{'':{width}}" + "".join(f"{tool:>22}" for tool in tools))
    for name, cell in ROWS:
        print(f"{name:{width}}" + "".join(f"{cell(summary[tool], table):>22}" for tool in tools))


def median_metrics(rounds: list[dict]) -> dict:
    """Medians of the numeric metrics over rounds; the rest from the last round."""
    merged = dict(rounds[-1])
    for key, value in rounds[-1].items():
        values = [r[key] for r in rounds if isinstance(r.get(key), (int, float))]
        if isinstance(value, (int, float)) and len(values) == len(rounds):
            merged[key] = statistics.median(values)
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--hosts", type=int, default=60, help="loopback hosts 127.0.0.2 .. (at most 60)")
    parser.add_argument("--skew", choices=["cc3m", "alttext"], default="cc3m",
                        help="the busiest hosts' shares: CC3M's published ones or the real alt-text table's")
    parser.add_argument("--host-concurrency", type=int, default=2, help="requests a host serves at once")
    parser.add_argument("--host-rate", type=float, default=8.0, help="requests a host admits in any second")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds each host takes before an image")
    parser.add_argument("--opt-out-hosts", action=argparse.BooleanOptionalAction, default=True,
                        help="one host disallowing /img/ in robots.txt, one sending tdm-reservation: 1")
    parser.add_argument("--images", type=int, default=500, help="distinct JPEG variants of the COCO photos")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--tools", nargs="+", choices=["tailor", "img2dataset"], default=["tailor", "img2dataset"])
    parser.add_argument("--tailor-set", action="append", default=[], metavar="FIELD=VALUE",
                        help="an extra --set for tailor annotate (repeatable), e.g. download.host_rate=8")
    parser.add_argument("--tailor-src", type=Path, metavar="DIR",
                        help="run tailor from this checkout instead (e.g. `git archive HEAD | tar -x -C DIR`)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds before a tool's run is stopped")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".work")
    args = parser.parse_args()
    args.work = args.work.resolve()
    if not 3 <= args.hosts <= 60:
        raise SystemExit("--hosts: 3 to 60 (127.0.0.2 .. 127.0.0.61)")
    guard = install_network_guard(args.work)
    images, captions = photos(args.work, args.images, args.seed)
    shares = list(CC3M_TOP_SHARES) if args.skew == "cc3m" else alttext_shares(args.hosts)
    rows_host = skewed_hosts(args.rows, shares, args.hosts, args.seed)
    specs, opted = host_specs(args)
    addresses = [s.address for s in specs]
    per_host = collections.Counter(rows_host)
    servable_counts = [per_host[h] for h in range(args.hosts) if addresses[h] not in opted]
    results: dict = {"rows": args.rows, "hosts": args.hosts, "skew": args.skew,
                     "top_shares_pct": [round(100 * s, 2) for s in host_shares(shares, args.hosts)[:6]],
                     "host_concurrency": args.host_concurrency, "host_rate": args.host_rate, "latency": args.latency,
                     "opted_out_hosts": opted, "tailor_set": args.tailor_set,
                     "tailor_src": str(args.tailor_src or ROOT), "rounds": []}
    with HostWeb(specs, images) as web:
        urls = web.urls_for([addresses[h] for h in rows_host])
        table = {"opted": opted, "host_of_url": {u: addresses[h] for u, h in zip(urls, rows_host, strict=True)},
                 "servable": sum(servable_counts), "opted_out_rows": args.rows - sum(servable_counts),
                 "busiest_rows": max(servable_counts, default=0)}
        table["rate_bound_s"] = table["busiest_rows"] / args.host_rate if args.host_rate else None
        results.update({k: table[k] for k in ("servable", "opted_out_rows", "busiest_rows", "rate_bound_s")})
        url_file = args.work / f"skew-{args.skew}-{args.rows}-{args.hosts}.parquet"
        pq.write_table(pa.table({"url": urls, "caption": [captions[i % len(captions)] for i in range(args.rows)]}),
                       url_file)
        print(f"{args.rows} rows over {args.hosts} hosts ({args.skew}: busiest {results['top_shares_pct']} %), "
              f"{table['servable']} servable, busiest servable host {table['busiest_rows']} rows: rate bound "
              f"{table['rate_bound_s']} s at {args.host_rate}/s; opted out: {opted or 'none'}", flush=True)
        tools = {"tailor": tailor, "img2dataset": img2dataset}
        for _ in range(args.rounds):
            done = {}
            for name in args.tools:
                web.reset()
                result, statuses, lost = tools[name](url_file, args.work / f"skew-{name}", args)
                time.sleep(0.2)  # the last answers are recorded
                done[name] = measure(web, result, statuses, lost, table)
                print(name, json.dumps({k: v for k, v in done[name].items() if k != "stderr_tail"}), flush=True)
            results["rounds"].append(done)
    summary = {name: median_metrics([r[name] for r in results["rounds"]]) for name in args.tools}
    results["summary"] = summary
    print()
    print_table(summary, table)
    if {"tailor", "img2dataset"} <= set(summary):
        t, i = summary["tailor"], summary["img2dataset"]
        def ratio(a, b):
            return round(a / b, 2) if a is not None and b else None

        ratios = {"ok_share_tailor_over_img2dataset": ratio(t["ok_share"], i["ok_share"]),
                  "wall_img2dataset_over_tailor": ratio(i["wall_s"], t["wall_s"]),
                  "fetch_img2dataset_over_tailor": ratio(i["fetch_s"], t["fetch_s"])}
        results["ratios"] = ratios
        print(f"\nrate bound {table['rate_bound_s']} s; tailor wall/bound {t['wall_over_bound']}, fetch/bound "
              f"{t['fetch_over_bound']}; img2dataset wall/bound {i['wall_over_bound']}, fetch/bound "
              f"{i['fetch_over_bound']}; ok share tailor/img2dataset {ratios['ok_share_tailor_over_img2dataset']}x; "
              f"wall img2dataset/tailor {ratios['wall_img2dataset_over_tailor']}x", flush=True)
    out = args.work / "host_skew.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"results in {out}", flush=True)
    refused = guard.read_text().splitlines()
    if refused:
        raise SystemExit("network guard refused non-loopback traffic:\n" + "\n".join(refused))


if __name__ == "__main__":
    main()
