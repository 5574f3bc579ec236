"""Prints bench/run.sh's results as one Markdown table of medians and ratios.

usage: table.py RESULTS.tsv CRITERION_DIR NPROC CPU_MODEL
"""
import json
import os
import statistics
import sys
from collections import defaultdict

results_path, criterion_dir, nproc, cpu = sys.argv[1:5]
EVENTS = {"small": 1_000_000, "large": 20_000, "multiline": 200_000, "huge": 4}

rows = []


def row(what, value, target="", verdict=""):
    rows.append((what, value, target, verdict))


def ok(flag):
    return "met" if flag else "**not met**"


# --- parser (criterion medians) ---------------------------------------------
def crit(group, bench, want_bytes=False):
    base = os.path.join(criterion_dir, group, bench, "new")
    try:
        est = json.load(open(os.path.join(base, "estimates.json")))
        meta = json.load(open(os.path.join(base, "benchmark.json")))
    except OSError:
        return None
    seconds = est["median"]["point_estimate"] / 1e9
    nbytes = meta["throughput"]["Bytes"]
    return nbytes if want_bytes else nbytes / seconds  # bytes per second


if os.path.isdir(criterion_dir):
    for group in ["small-16k", "large-16k", "multiline-16k", "small-256k", "large-256k", "huge-16k"]:
        corpus = group.split("-")[0]
        rates = {b: crit(group, b) for b in
                 ["sse-relay", "sse-relay-owned", "launchdarkly", "eventsource-stream", "sse-stream",
                  "memchr-lines"]}
        ours = rates["sse-relay"]
        if ours is None:
            continue
        parts = []
        for name in ["sse-relay-owned", "launchdarkly", "eventsource-stream", "sse-stream", "memchr-lines"]:
            r = rates[name]
            if r:
                parts.append(f"{name} {r / 1e6:,.0f} MB/s ({ours / r:.2f}x)")
        ev = ""
        if corpus in ("small", "multiline"):
            # events/s from the corpus' mean event size
            mean = crit(group, "sse-relay", want_bytes=True) / EVENTS[corpus]
            ev = f", {ours / mean / 1e6:.1f}M events/s"
        target, verdict = "", ""
        ld = rates["launchdarkly"]
        if group in ("small-16k", "multiline-16k") and ld:
            target, verdict = ">= 5x launchdarkly", ok(ours / ld >= 5)
        elif group == "large-16k" and ld:
            target, verdict = ">= 2x launchdarkly", ok(ours / ld >= 2)
        elif group == "huge-16k":
            target, verdict = ">= 1 GB/s", ok(ours >= 1e9)
        elif group.endswith("256k"):
            base = crit(group.replace("256k", "16k"), "sse-relay")
            if base:
                target = "as fast as 16 KiB chunks"
                verdict = f"{ours / base:.2f}x of 16 KiB: " + ok(ours / base >= 0.9)
        row(f"parser {group}", f"{ours / 1e6:,.0f} MB/s{ev}; " + "; ".join(parts), target, verdict)

# --- end to end and scale ------------------------------------------------------
vals = defaultdict(list)
if os.path.exists(results_path):
    for line in open(results_path):
        key, _run, value = line.rstrip("\n").split("\t")
        vals[key].append(float(value))


def med(key):
    return statistics.median(vals[key]) if vals.get(key) else None


for corpus in ["small", "large"]:
    process = med(f"e2e.{corpus}.relay.seconds")
    if process is None:
        continue
    # First response to last record in the file, as curl and the peer client
    # time themselves; the whole-process time is shown too.
    relay = med(f"e2e.{corpus}.relay.active_seconds") or process
    body = med(f"e2e.{corpus}.body_bytes")
    curl = med(f"e2e.{corpus}.curl.seconds")
    curl_file = med(f"e2e.{corpus}.curl_file.seconds")
    ld = med(f"e2e.{corpus}.ld.seconds")
    rss = med(f"e2e.{corpus}.relay.rss_kib")
    n = EVENTS[corpus]
    relay_eps, ld_eps = n / relay, n / ld
    text = (f"sse-relay {relay_eps / 1e6:.2f}M events/s, {body / relay / 1e6:,.0f} MB/s body; "
            f"curl -N {body / curl / 1e6:,.0f} MB/s"
            + (f" (to a file: {body / curl_file / 1e6:,.0f} MB/s)" if curl_file else "")
            + f"; launchdarkly {ld_eps / 1e6:.2f}M events/s "
            f"({body / ld / 1e6:,.0f} MB/s); peak RSS {rss / 1024:.1f} MiB; whole sse-relay "
            f"process {process:.3f} s ({n / process / 1e6:.2f}M events/s, {body / process / 1e6:,.0f} MB/s)")
    if corpus == "small":
        row("end to end small (file sink)", text, ">= 2x launchdarkly events/s",
            f"{relay_eps / ld_eps:.2f}x: " + ok(relay_eps >= 2 * ld_eps))
    else:
        row("end to end large (file sink)", text, ">= 50% of curl bytes/s",
            f"{curl / relay * 100:.0f}%: " + ok(curl / relay >= 0.5)
            + (f" ({curl_file / relay * 100:.0f}% of curl writing a file)" if curl_file else ""))
    # Whole processes, as a user runs them: start to exit, each peer timed the
    # same way (bash's clock around /usr/bin/time) in the same interleaved runs.
    ld_process = med(f"e2e.{corpus}.ld.process_seconds")
    curl_process = med(f"e2e.{corpus}.curl_file.process_seconds")
    if corpus == "small" and ld_process:
        row("whole process, small: events/s against launchdarkly's client",
            f"sse-relay {n / process / 1e6:.2f}M/s ({process:.3f} s); launchdarkly "
            f"{n / ld_process / 1e6:.2f}M/s ({ld_process:.3f} s)", ">= 2.5x",
            f"{ld_process / process:.2f}x: " + ok(ld_process / process >= 2.5))
    if corpus == "large" and curl_process:
        row("whole process, large: bytes/s against curl -N writing a file",
            f"sse-relay {body / process / 1e6:,.0f} MB/s ({process:.3f} s); curl "
            f"{body / curl_process / 1e6:,.0f} MB/s ({curl_process:.3f} s)", ">= 0.9x",
            f"{curl_process / process:.2f}x: " + ok(curl_process / process >= 0.9))
    row(f"peak RSS, one stream ({corpus})", f"{rss / 1024:.1f} MiB", "<= 20 MiB", ok(rss <= 20 * 1024))

for scheme, rss_target in [("http", 100), ("https", 128)]:
    key = f"scale.{scheme}"
    if med(f"{key}.rss_kib") is None:
        continue
    n = med(f"{key}.connected")
    rss = med(f"{key}.rss_kib")
    row(f"scale ({scheme}): streams connected", f"{n:.0f}")
    row(f"scale ({scheme}): total RSS", f"{rss / 1024:.1f} MiB ({rss / max(n, 1):.1f} KiB a stream)",
        f"<= {rss_target} MiB", ok(rss <= rss_target * 1024))
    cpu_pct = med(f"{key}.idle_cpu_pct")
    row(f"scale ({scheme}): idle CPU", f"{cpu_pct:.2f}% of one core", "< 1%", ok(cpu_pct < 1))
    floor = med("scale.http.floor_cpu_pct")
    if floor is not None:
        row(f"scale ({scheme}): idle CPU against the floor (bare tokio readers of as many http streams)",
            f"sse-relay {cpu_pct:.2f}%; floor {floor:.2f}%", "", f"{cpu_pct / max(floor, 0.01):.2f}x the floor")
    if med(f"{key}.reconnected") is not None:
        row(f"scale ({scheme}): reconnect after server restart",
            f"{med(f'{key}.reconnected'):.0f} reconnected; spread p0 {med(f'{key}.reconnect_p0_s'):.2f}s, "
            f"p50 {med(f'{key}.reconnect_p50_s'):.2f}s, p99 {med(f'{key}.reconnect_p99_s'):.2f}s, "
            f"max {med(f'{key}.reconnect_p100_s'):.2f}s", "all, jittered", "")
        row(f"scale ({scheme}): resumed with their Last-Event-ID", f"{med(f'{key}.resumed'):.0f} of {n:.0f}",
            "all", ok(med(f"{key}.resumed") >= n))

for sink, baseline in [("webhook", "reqwest posting the same NDJSON batches"),
                       ("nats", "async-nats, 256 acks in flight")]:
    ours, raw = med(f"sinks.{sink}.relay.seconds"), med(f"sinks.{sink}.raw.seconds")
    if not ours or not raw:
        continue
    n = EVENTS["small"]
    row(f"{sink} sink, small records, events/s",
        f"sse-relay {n / ours / 1e3:,.0f}k/s ({ours:.2f} s); raw client {n / raw / 1e3:,.0f}k/s "
        f"({raw:.2f} s, {baseline})", ">= 0.8x the raw client",
        f"{raw / ours:.2f}x: " + ok(raw / ours >= 0.8))

if med("latency.p99_us") is not None:
    p99 = med("latency.p99_us")
    row("latency, server write -> record in file (1,000 events/s, fsync never)",
        f"p50 {med('latency.p50_us') / 1000:.3f} ms, p99 {p99 / 1000:.3f} ms, "
        f"max {med('latency.max_us') / 1000:.3f} ms ({med('latency.n'):.0f} events)",
        "p99 < 1 ms", ok(p99 < 1000))

print(f"Machine: {nproc} cores, {cpu}; loopback (127.0.0.1) only; medians.\n")
print("| measurement | result | target | verdict |")
print("|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(r) + " |")
