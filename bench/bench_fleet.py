#!/usr/bin/env python3
"""Benchmark: a Watcher of 100,000 devices serving /metrics and /devices, against prometheus_client.

    python3 bench/bench_fleet.py             # 1 round, 5 renderings of each page, about 2 minutes
    python3 bench/bench_fleet.py --quick     # 20,000 devices, 3 renderings, fewer requests
    python3 bench/bench_fleet.py --devices 50000 --renders 7 --rounds 2
    python3 bench/bench_fleet.py --profile   # and a cProfile of one /metrics and one /devices

No broker. Each peer runs in its own subprocess of bench/.venv-pihace100's interpreter (pihace.py
from a snapshot, with psutil blocked); the peers alternate order from round to round and each
figure is the median over rounds (within a round, the median of --renders renderings).

pihace.py: a Watcher (wall_clock= a fake clock) fed synthetic reports, `--devices` distinct
names and hosts: every device reports once at T0, all but the silent ones once more later (the
late ones 120 s before the end, the others 10 s before), then the clock moves to the end and
check_ages() runs: 3 % down, 2 % degraded, 2 % late, 1 % silent, the rest up.
   1 apply(): median and 99th percentile of the second reports (100,000 devices known), µs,
     and json.loads() of the same body timed just before each (the ratio: the median of the
     per-report ratios);
     RSS of the process after a gc.collect(), and its growth over the process before the Watcher;
     and, in a process of its own after the rounds, the same once every device has sent
     dedup_window + 2 reports (its window of message ids full, as in a fleet that has run for
     that many intervals)
   2 /metrics and /devices (limit=1000), rendered as `pihace watch --listen` does:
     _FleetPages(watcher, refresh=0).respond(...) (each call reads the fleet, sorts it and renders
     again): median time and size; and the parts alone (Watcher.metric_rows(),
     _fleet_prometheus(rows), Watcher.devices_page(0, 1000))
   3 serving: the real HTTP server (`_http_classes()[0](("127.0.0.1", 0), _FleetPages(watcher))`,
     refresh 1 s as --listen has it) in a thread; a client subprocess with 10 threads, each on its
     own keep-alive connection, GETs /metrics and /devices in turn `--requests` times each;
     per-request latency (request sent to last byte read) median and 99th percentile; the
     server's RSS before, its peak while serving (VmHWM after clearing it, and VmRSS sampled
     every 10 ms) and after
prometheus_client: a CollectorRegistry with Gauges of the same names and label sets
   (pihace_device_up{device,name,host}, pihace_device_state{device,state} for the state it is in,
   pihace_device_last_seen_timestamp_seconds{device,name,host},
   pihace_device_uptime_ratio{device,window} over 24h and 7d, pihace_devices{state},
   pihace_watch_connected, pihace_watch_reports_total{outcome}) holding the same values; the
   time to fill it once and to render it with generate_latest(), and its size.
"""

import argparse
import hashlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time

import common
from common import REPO, ensure_venv, identity_after, in_order, ours_identity, \
    ours_snapshots, print_rows

# pihace's DEVICE_STATES, worst first
STATES = ("silent", "missing", "down", "late", "degraded", "paused", "stopped", "up")
WINDOWS = ("24h", "7d")  # pihace_device_uptime_ratio{device,window}: one line per window
T0 = 1_800_000_000  # the fake clock's start (2027-01-15), whole seconds
END = T0 + 1000  # where it stands when the pages are rendered
INTERVAL = 60.0  # late after 90 s, silent after 180 s (pihace's default grace: half the interval)


def plan(index):
    """(name, host, status of its newest report, state at END, seconds before END it last
    reported) of device `index`: per 100 devices, 3 down, 2 degraded, 2 late, 1 silent."""
    name, host = f"sensor-{index:06d}", f"h{index:06d}.site-{index % 37:02d}.example"
    slot = index % 100
    status = ("Unavailable" if slot < 3 else "Partially Available" if slot < 5 else "Available")
    if 90 <= slot < 92:
        return name, host, status, "late", 120
    if slot == 95:
        return name, host, status, "silent", END - T0
    return name, host, status, {"Unavailable": "down", "Partially Available": "degraded"}.get(
        status, "up"), 10


def report_body(index, status, name, host):
    """A pusher's report (450 to 490 bytes), as `pihace push --interval 60` sends it."""
    failing = {"db": "timeout after 5s"} if status == "Unavailable" else \
        {"cache": "connection refused"} if status == "Partially Available" else None
    report = {"status": status, "timestamp": "2027-01-15T08:00:00.000000Z", "failure": failing,
              "rate": "3/3" if failing is None else "2/3", "duration": 0.012, "system": None,
              "component": {"name": name, "version": "2.7.1"},
              "checks": {check: {"status": "fail" if failing and check in failing else "pass",
                                 "duration_ms": 3.2, "attempts": 1, "message": None}
                         for check in ("db", "cache", "broker")},
              "host": host, "interval": INTERVAL}
    return json.dumps(report, separators=(",", ":")).encode()


def rss_mb(field="VmRSS"):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field)) / 1024


def reset_peak():
    """Reset VmHWM to the current RSS (Linux: "5" to clear_refs): True if it could."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


def expected_counts(devices):
    counts = dict.fromkeys(STATES, 0)
    for index in range(devices):
        counts[plan(index)[3]] += 1
    return counts


def median_ms(seconds):
    return statistics.median(seconds) * 1000


# ---------------------------------------------------------------------------
# workers: each runs in a subprocess of the venv's interpreter
# ---------------------------------------------------------------------------

def work_pihace(options):
    import gc

    sys.modules["psutil"] = None
    import pihace

    devices, renders = options["devices"], options["renders"]
    gc.collect()
    before = rss_mb()
    clock = [float(T0)]
    watcher = pihace.Watcher("amqp://localhost/", wall_clock=lambda: clock[0])
    apply, perf_ns = watcher.apply, time.perf_counter_ns
    for index in range(devices):  # first seen at T0, all up
        name, host, _, _, _ = plan(index)
        apply(report_body(index, "Available", name, host),
              {"message_id": f"a-{index}", "timestamp": T0})
    times, loads_times, loads = [], [], json.loads
    for phase in (120, 10):  # the late ones' last report, then everyone else's but the silent
        clock[0] = float(END - phase)
        for index in range(devices):  # plans made again, not kept: they would count in RSS
            name, host, status, _, ago = plan(index)
            if ago != phase:
                continue
            body = report_body(index, status, name, host)
            properties = {"message_id": f"b-{index}", "timestamp": END - phase - 1}
            start = perf_ns()
            loads(body)
            middle = perf_ns()
            outcome = apply(body, properties)
            times.append(perf_ns() - middle)
            loads_times.append(middle - start)
            assert outcome == "applied", outcome
    clock[0] = float(END)
    start = time.perf_counter()
    changed = watcher.check_ages()
    check_ages_ms = (time.perf_counter() - start) * 1000
    gc.collect()
    built = rss_mb()
    _, counts, _ = watcher.devices_page(0, 1)
    assert counts == expected_counts(devices), counts
    ratio = statistics.median(applied / loaded for applied, loaded in zip(times, loads_times))
    times.sort()
    loads_times.sort()
    result = {"loads_median_us": loads_times[len(loads_times) // 2] / 1000,
              "apply_to_loads": ratio, "file": pihace.__file__, "counts": counts, "changed": changed,
              "check_ages_ms": check_ages_ms, "rss": built, "growth": built - before,
              "apply_median_us": times[len(times) // 2] / 1000,
              "apply_p99_us": times[len(times) * 99 // 100] / 1000}

    # 2: the pages, rendered again at every call (refresh=0)
    pages = pihace._FleetPages(watcher, refresh=0)
    for figure, path, query in (("metrics", "/metrics", ""), ("devices", "/devices",
                                                              "limit=1000")):
        seconds = []
        gc.collect()
        ready, hwm = rss_mb(), reset_peak()
        for _ in range(renders):
            start = time.perf_counter()
            code, _, body, _ = pages.respond(path, query, "*/*")
            if not isinstance(body, bytes):  # /metrics: parts, made as they are sent
                body = b"".join(body)
            seconds.append(time.perf_counter() - start)
            assert code == 200, code
            if hwm:  # the peak of the first rendering alone, over the RSS before it
                result[f"{figure}_peak"], hwm = rss_mb("VmHWM") - ready, False
        result[f"{figure}_ms"], result[f"{figure}_mb"] = median_ms(seconds), len(body) / 1e6
        if figure == "metrics":
            result["metrics_samples"] = sum(1 for line in body.split(b"\n")
                                            if line and not line.startswith(b"#"))
        del body
    gc.collect()
    result["rss_cached"] = rss_mb()  # the pages keep their last view and renderings
    parts = {"rows": watcher.metric_rows}
    rows = watcher.metric_rows()
    parts["format"] = lambda: pihace._fleet_prometheus(rows, watcher.status)
    parts["page"] = lambda: watcher.devices_page(0, 1000)
    for part, call in parts.items():
        seconds = []
        for _ in range(3 if result["metrics_ms"] < 2000 else 1):
            start = time.perf_counter()
            call()
            seconds.append(time.perf_counter() - start)
        result[f"part_{part}_ms"] = median_ms(seconds)
    rows = parts = None  # not kept for the serving figures
    if options.get("profile"):
        profile_pages(pihace._FleetPages(watcher, refresh=0))
    del pages
    gc.collect()

    # 3: serving, as `pihace watch --listen` does
    result.update(serve(pihace, watcher, options))
    print(json.dumps(result), flush=True)
    os._exit(0)  # not waiting for renderings the server may still run for requests given up on


def work_steady(options):
    """RSS of a Watcher whose devices have each sent enough reports to fill their window of
    message ids (what a fleet holds after `dedup_window` intervals, half an hour at interval
    60 s with a window of 32; work_pihace's devices have sent two)."""
    import gc

    sys.modules["psutil"] = None
    import pihace

    devices = options["devices"]
    gc.collect()
    before = rss_mb()
    clock = [float(T0)]
    watcher = pihace.Watcher("amqp://localhost/", wall_clock=lambda: clock[0])
    reports = watcher.dedup_window + 2
    bodies = [report_body(index, "Available", *plan(index)[:2]) for index in range(devices)]
    for number in range(reports):
        clock[0] = float(T0 + number * INTERVAL)
        properties = {"timestamp": T0 + int(number * INTERVAL)}
        for index, body in enumerate(bodies):
            properties["message_id"] = f"{number}-{index}"
            assert watcher.apply(body, properties) == "applied"
    del bodies
    gc.collect()
    rss = rss_mb()
    print(json.dumps({"file": pihace.__file__, "steady_rss": rss, "steady_growth": rss - before,
                      "steady_reports": reports, "dedup_window": watcher.dedup_window}))


def profile_pages(pages):
    """cProfile of one /metrics and one /devices rendering, to stderr."""
    import cProfile
    import io
    import pstats

    for path, query in (("/metrics", ""), ("/devices", "limit=1000")):
        profiler = cProfile.Profile()
        profiler.enable()
        pages.respond(path, query, "*/*")
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(12)
        print(f"--- cProfile of {path} (tottime) ---\n{text.getvalue()}", file=sys.stderr)


def serve(pihace, watcher, options):
    import gc

    server = pihace._http_classes()[0](("127.0.0.1", 0), pihace._FleetPages(watcher))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    gc.collect()
    before = rss_mb()
    hwm_reset = reset_peak()
    peak, done = [before], threading.Event()

    def sample():
        while not done.wait(0.01):
            peak[0] = max(peak[0], rss_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    client = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--worker", "clients", json.dumps(
            {"port": server.server_address[1], "clients": options["clients"],
             "requests": options["requests"], "serve_seconds": options["serve_seconds"]})],
        capture_output=True, text=True, timeout=options["serve_seconds"] + 300)
    done.set()
    sampler.join()
    peak_hwm = rss_mb("VmHWM") if hwm_reset else None
    gc.collect()
    after = rss_mb()
    server.shutdown()  # the accepting loop; the handlers' threads are daemons
    server.server_close()
    if client.returncode:
        raise SystemExit(f"the clients failed:\n{client.stderr}")
    latencies = json.loads(client.stdout.strip().splitlines()[-1])
    result = {"serve_before": before, "serve_after": after, "serve_peak_sampled": peak[0],
              "serve_peak_hwm": peak_hwm}
    failures = latencies.pop("failures")
    result["serve_wall"] = latencies.pop("wall")
    for figure in ("metrics", "devices"):
        failed = [seconds for page, _, seconds in failures if page == figure]
        result[f"serve_{figure}_failed"] = len(failed)
        if failed:
            result[f"serve_{figure}_failure"] = sorted({what for page, what, _ in failures
                                                        if page == figure})
            result[f"serve_{figure}_failed_after_s"] = statistics.median(failed)
    for figure, seconds in latencies.items():
        if not seconds:
            continue
        seconds.sort()
        result[f"serve_{figure}_median_ms"] = median_ms(seconds)
        result[f"serve_{figure}_p99_ms"] = seconds[min(len(seconds) - 1,
                                                       len(seconds) * 99 // 100)] * 1000
        result[f"serve_{figure}_count"] = len(seconds)
    return result


def work_clients(options):
    """`clients` threads, each on a keep-alive connection: /metrics and /devices in turn,
    `requests` times each; bodies read in 1 MB pieces and dropped."""
    import http.client

    latencies = {"metrics": [], "devices": []}
    failures = []  # (page, what went wrong, seconds it took): counted, not fatal
    start_together = threading.Barrier(options["clients"])
    stop_at = time.monotonic() + options["serve_seconds"]

    def get(connection, path):
        connection.request("GET", path)
        response = connection.getresponse()
        size = 0
        while True:
            piece = response.read(1 << 20)
            if not piece:
                break
            size += len(piece)
        if response.status != 200 or not size:
            raise ValueError(f"status {response.status}, {size} bytes")

    def client():
        connection = http.client.HTTPConnection("127.0.0.1", options["port"], timeout=120)
        start_together.wait()
        for _ in range(options["requests"]):
            for figure, path in (("metrics", "/metrics"), ("devices", "/devices?limit=1000")):
                if time.monotonic() > stop_at:
                    return
                start = time.perf_counter()
                try:
                    get(connection, path)
                except Exception as exc:  # the server closed it, or answered badly
                    failures.append((figure, type(exc).__name__, time.perf_counter() - start))
                    connection.close()
                    connection = http.client.HTTPConnection("127.0.0.1", options["port"],
                                                            timeout=120)
                    continue
                latencies[figure].append(time.perf_counter() - start)
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(options["clients"])]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    latencies["wall"] = time.perf_counter() - start
    latencies["failures"] = failures
    print(json.dumps(latencies))


def work_peer(options):
    import gc

    import prometheus_client
    from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

    prometheus_client.disable_created_metrics()  # pihace has no *_created series
    devices, renders = options["devices"], options["renders"]
    gc.collect()
    before = rss_mb()
    start = time.perf_counter()
    registry = CollectorRegistry(auto_describe=False)
    up = Gauge("pihace_device_up", "1 when the device's newest report says Available and it is "
               "not late, else 0.", ("device", "name", "host"), registry=registry)
    state = Gauge("pihace_device_state", "The device's state: 1 for the one it is in.",
                  ("device", "state"), registry=registry)
    seen = Gauge("pihace_device_last_seen_timestamp_seconds", "When the device's newest report "
                 "was sent.", ("device", "name", "host"), registry=registry)
    fleet = Gauge("pihace_devices", "Devices in each state.", ("state",), registry=registry)
    connected = Gauge("pihace_watch_connected", "1 while the watcher reads its queue; 0 while it "
                      "cannot (its view is then stale).", registry=registry)
    reports = Counter("pihace_watch_reports", "Reports the watcher received, by outcome.",
                      ("outcome",), registry=registry)
    uptime = Gauge("pihace_device_uptime_ratio", "The share of the window the device was up, "
                   "out of the time it was watched (paused and stopped not counted).",
                   ("device", "window"), registry=registry)
    rows = sorted((f"{name}@{host}", name, host, now_state, ago)
                  for name, host, _, now_state, ago in map(plan, range(devices)))
    counts = dict.fromkeys(STATES, 0)
    for device, name, host, now_state, ago in rows:
        up.labels(device, name, host).set(1 if now_state == "up" else 0)
        state.labels(device, now_state).set(1)  # the state it is in, as pihace.py writes it
        seen.labels(device, name, host).set(END - ago)
        for window in WINDOWS:  # what pihace has of a device watched since T0
            uptime.labels(device, window).set(1.0 if now_state == "up" else 0.0)
        counts[now_state] += 1
    for each, n in counts.items():
        fleet.labels(each).set(n)
    connected.set(1)
    for outcome, n in (("applied", 2 * devices - devices // 100), ("duplicate", 0),
                       ("invalid", 0), ("stale", 0), ("refused", 0)):
        reports.labels(outcome).inc(n)
    fill = time.perf_counter() - start
    del rows
    gc.collect()
    filled = rss_mb()
    seconds = []
    for _ in range(renders):
        start = time.perf_counter()
        body = generate_latest(registry)
        seconds.append(time.perf_counter() - start)
    samples = sum(1 for line in body.split(b"\n") if line and not line.startswith(b"#"))
    print(json.dumps({"file": prometheus_client.__file__, "version": prometheus_client.__version__
                      if hasattr(prometheus_client, "__version__") else _version(),
                      "fill_ms": fill * 1000, "rss": filled, "growth": filled - before,
                      "metrics_ms": median_ms(seconds), "metrics_mb": len(body) / 1e6,
                      "metrics_samples": samples}))


def _version():
    from importlib.metadata import version

    return version("prometheus_client")


def worker(name, options):
    if name == "pihace":
        work_pihace(options)
    elif name == "peer":
        work_peer(options)
    elif name == "steady":
        work_steady(options)
    elif name == "clients":
        work_clients(options)
    else:
        raise SystemExit(f"unknown worker {name!r}")


# ---------------------------------------------------------------------------
# parent: runs the workers and prints the table
# ---------------------------------------------------------------------------

def run_rounds(options, rounds, snapshot):
    results = {}
    for round_number in range(rounds):
        for peer in in_order(("pihace", "peer"), round_number):
            print(f"round {round_number + 1}/{rounds}: {peer} ...", file=sys.stderr)
            env = common.env_for(snapshot if peer == "pihace" else None)
            if options.get("profile") and peer == "pihace":  # its stderr is the profile
                command = [common.VENV_PYTHON, os.path.abspath(__file__), "--worker", peer,
                           json.dumps(options)]
                done = subprocess.run(command, cwd=common.BENCH, env=env, stdout=subprocess.PIPE,
                                      text=True, timeout=1800, check=True)
                result = json.loads(done.stdout.strip().splitlines()[-1])
            else:
                result = common.run_worker(__file__, peer, options, env, timeout=1800)
            if peer == "pihace":  # guard against measuring the wrong pihace
                assert result["file"].startswith(snapshot + os.sep), result["file"]
            for figure, value in result.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    results.setdefault((peer, figure), []).append(value)
                else:
                    results[(peer, figure)] = value
    return results


def print_table(results, options, rounds, header):
    devices = options["devices"]

    def value(peer, figure):
        values = results.get((peer, figure))
        if values is None or isinstance(values, (str, dict)):
            return None, ""
        if None in values:
            return None, ""
        spread = f"{common.fmt(min(values), 1)}..{common.fmt(max(values), 1)}" \
            if len(values) > 1 else ""
        return statistics.median(values), spread

    def verdict(met, text):
        return f"{text}: {'met' if met else 'MISSED'}"

    metrics_ms, devices_ms = value("pihace", "metrics_ms")[0], value("pihace", "devices_ms")[0]
    rss, ratio = value("pihace", "rss")[0], value("pihace", "apply_to_loads")[0]
    peak = max(value("pihace", "serve_peak_sampled")[0] or 0,
               value("pihace", "serve_peak_hwm")[0] or 0)
    served_before = value("pihace", "serve_before")[0]
    one = value("pihace", "metrics_mb")[0]
    rows = [
        ("1 apply() of a report, 100,000 devices known: median, us".replace(
            "100,000", f"{devices:,}"), "pihace.py Watcher", "apply_median_us", "<= 20 us"),
        ("  99th percentile, us", "pihace.py Watcher", "apply_p99_us", None),
        ("  json.loads() of the same report, just before: median, us", "pihace.py Watcher",
         "loads_median_us", None),
        ("  apply() / json.loads(), median of the per-report ratios", "pihace.py Watcher",
         "apply_to_loads", verdict(ratio is not None and ratio <= 1.15, "<= 1.15")),
        ("  check_ages() once at the end, ms", "pihace.py Watcher", "check_ages_ms", None),
        (f"  RSS of the process with {devices:,} devices, MB", "pihace.py Watcher", "rss",
         verdict(rss <= 100, "<= 100 MB")),
        ("  of which the Watcher's own (RSS growth), MB", "pihace.py Watcher", "growth", None),
        ("  RSS once every device's id window is full ({} reports each), MB".format(
            int(value("pihace", "steady_reports")[0] or 0)), "pihace.py Watcher", "steady_rss",
         verdict((value("pihace", "steady_rss")[0] or math.inf) <= 100, "<= 100 MB")),
        ("    of which the Watcher's own (RSS growth), MB", "pihace.py Watcher",
         "steady_growth", None),
        ("2 /metrics rendered once, ms", "pihace.py _FleetPages", "metrics_ms",
         verdict(metrics_ms < 1000, "< 1 s")),
        ("", "prometheus_client generate_latest", "metrics_ms", None),
        ("  /metrics size, MB", "pihace.py _FleetPages", "metrics_mb", None),
        ("", "prometheus_client generate_latest", "metrics_mb", None),
        ("  peak RSS of the first rendering, over the RSS before it, MB",
         "pihace.py _FleetPages", "metrics_peak", None),
        ("  /metrics samples (lines)", "pihace.py _FleetPages", "metrics_samples", None),
        ("", "prometheus_client generate_latest", "metrics_samples", None),
        ("  of /metrics: Watcher.metric_rows(), ms", "pihace.py", "part_rows_ms", None),
        ("  of /metrics: _fleet_prometheus(rows) text, ms", "pihace.py", "part_format_ms",
         None),
        ("  of /devices: Watcher.devices_page(0, 1000), ms", "pihace.py", "part_page_ms", None),
        ("  filling the registry once, ms", "prometheus_client", "fill_ms", None),
        ("  RSS with the registry filled, MB", "prometheus_client", "rss", None),
        ("  of which the registry's own (RSS growth), MB", "prometheus_client", "growth", None),
        ("3 /devices?limit=1000 rendered once, ms", "pihace.py _FleetPages", "devices_ms",
         verdict(devices_ms < 1000, "< 1 s")),
        ("  /devices page size, MB", "pihace.py _FleetPages", "devices_mb", None),
        ("  peak RSS of the first rendering, over the RSS before it, MB",
         "pihace.py _FleetPages", "devices_peak", None),
        ("  RSS after the renderings (pages cache their view), MB", "pihace.py _FleetPages",
         "rss_cached", None),
        (f"4 serving, {options['clients']} clients x {options['requests']} x /metrics: "
         "median, ms", "pihace.py server", "serve_metrics_median_ms", None),
        ("  99th percentile, ms", "pihace.py server", "serve_metrics_p99_ms", None),
        ("  the same clients' /devices: median, ms", "pihace.py server",
         "serve_devices_median_ms", None),
        ("  99th percentile, ms", "pihace.py server", "serve_devices_p99_ms", None),
        ("  /metrics requests that failed", "pihace.py server", "serve_metrics_failed", None),
        ("  /devices requests that failed", "pihace.py server", "serve_devices_failed", None),
        ("  wall time of all the requests, s", "pihace.py server", "serve_wall", None),
        ("  RSS before serving, MB", "pihace.py server", "serve_before", None),
        ("  peak RSS while serving (VmHWM), MB", "pihace.py server", "serve_peak_hwm", None),
        ("  peak RSS while serving (sampled /10 ms), MB", "pihace.py server",
         "serve_peak_sampled", None),
        ("  RSS after serving, MB", "pihace.py server", "serve_after", None),
    ]
    peers = {"pihace.py Watcher": "pihace", "pihace.py _FleetPages": "pihace",
             "pihace.py": "pihace", "pihace.py server": "pihace",
             "prometheus_client generate_latest": "peer", "prometheus_client": "peer"}
    lines = [("figure", "who", "median", "min..max", "target (pihace.py)")]
    for label, who, figure, target in rows:
        median, spread = value(peers[who], figure)
        decimals = 0 if figure.endswith("samples") else 2
        whole = figure.endswith(("samples", "failed")) and median is not None
        shown = f"{median:,.0f}" if whole else common.fmt(median, decimals, thousands=True)
        lines.append((label, who, shown, spread, target or ""))
    print()
    for line in header:
        print(line)
    print()
    print_rows(lines, right=(2, 3))
    print()
    counts = results[("pihace", "counts")]
    print(f"- The fleet: {devices:,} devices, " + ", ".join(
        f"{n:,} {state}" for state, n in counts.items()) + f"; check_ages() changed "
        f"{int(value('pihace', 'changed')[0]):,} states. Renderings: median of "
        f"{options['renders']} per round; rounds: {rounds}.")
    print("- /metrics and /devices figures are _FleetPages.respond() with refresh=0: each call "
          "reads the watcher again (/metrics: Watcher.metric_rows(), lists of what the devices "
          "hold, then the text made in parts and joined here (the peak RSS of figure 2 is "
          "that join's; served, the parts are sent as they are made); /devices: Watcher.devices_page(), a sort and the page's snapshots), "
          "then renders. generate_latest() renders a registry that already holds the values; filling "
          "it is timed apart (what an application would pay again on every change).")
    for figure in ("metrics", "devices"):
        if results.get(("pihace", f"serve_{figure}_failed"), [0])[0]:
            reasons = ", ".join(results[("pihace", f"serve_{figure}_failure")])
            after = results[("pihace", f"serve_{figure}_failed_after_s")][0]
            print(f"- Failed /{figure} requests: {reasons}, after {after:.1f} s "
                  "(median); the clients send no new request after "
                  f"{options['serve_seconds']:g} s.")
    if peak and served_before is not None and one:
        alone = value("pihace", "metrics_peak")[0]
        print(f"- Serving: peak RSS {peak - served_before:+.1f} MB over the RSS before serving; "
              f"one /metrics rendering is {one:.1f} MB of bytes (ten copies would be "
              f"{10 * one:.0f} MB)" + (f" and peaks at {alone:+.1f} MB alone (figure 2)"
                                       if alone is not None else "") +
              ". Latency is measured in a client subprocess (request sent to last byte read), "
              "its threads sharing the same 2 CPUs as the server.")


def file_identity(path):
    """The identity line of a pihace.py given with --pihace."""
    with open(path, "rb") as source:
        text = source.read()
    lines = text.count(b"\n")
    return (f"{os.path.abspath(path)} (--pihace), {lines} lines, sha256 "
            f"{hashlib.sha256(text).hexdigest()[:12]}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="20,000 devices, 3 renderings, 2 requests per client")
    parser.add_argument("--devices", type=int, help="devices (default 100,000)")
    parser.add_argument("--renders", type=int, help="renderings of each page (default 5)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds (default 1)")
    parser.add_argument("--clients", type=int, default=10, help="concurrent clients (10)")
    parser.add_argument("--requests", type=int,
                        help="requests of each page per client (default 5, quick 2)")
    parser.add_argument("--serve-seconds", type=float, default=120,
                        help="the clients send no new request after this (default 120)")
    parser.add_argument("--pihace", metavar="FILE",
                        help="measure this pihace.py instead of the repository's (a fix, say)")
    parser.add_argument("--profile", action="store_true",
                        help="print a cProfile of one /metrics and one /devices to stderr")
    parser.add_argument("--worker", nargs=2, metavar=("NAME", "JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker[0], json.loads(args.worker[1]))
        return 0
    common.stop_on_sigterm()
    options = {"devices": args.devices or (20000 if args.quick else 100000),
               "renders": args.renders or (3 if args.quick else 5),
               "requests": args.requests or (2 if args.quick else 5),
               "clients": args.clients, "profile": args.profile,
               "serve_seconds": args.serve_seconds}
    ensure_venv("prometheus_client")
    identity = ours_identity() if not args.pihace else file_identity(args.pihace)
    loads = [os.getloadavg()]
    started = time.monotonic()
    with ours_snapshots() as (snapshot, _):
        if args.pihace:
            shutil.copy(args.pihace, os.path.join(snapshot, "pihace.py"))
        results = run_rounds(options, args.rounds, snapshot)
        print("the duplicate window filled ...", file=sys.stderr)
        steady = common.run_worker(__file__, "steady", options, common.env_for(snapshot),
                                   timeout=1800)
        assert steady["file"].startswith(snapshot + os.sep), steady["file"]
        results.update({("pihace", figure): [value] for figure, value in steady.items()
                        if figure != "file"})
    loads.append(os.getloadavg())
    commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    version = results[("peer", "version")]
    header = [f"pihace.py ({REPO}, HEAD {commit}) Watcher pages vs prometheus_client {version}, "
              f"one run, {time.monotonic() - started:.0f} s",
              f"pihace.py: {identity_after(identity) if not args.pihace else identity}",
              common.machine_and_loads(loads)]
    print_table(results, options, args.rounds, header)
    common.print_load_note(loads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
