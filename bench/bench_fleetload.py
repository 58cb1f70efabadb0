#!/usr/bin/env python3
"""Load test: `pihace watch` consuming a fleet of 100,000 devices through a real RabbitMQ.

    python3 bench/bench_fleetload.py              # 3 minutes measured, after a warm-up
    python3 bench/bench_fleetload.py --quick      # 30 s measured
    python3 bench/bench_fleetload.py --duration 600 --devices 50000
    python3 bench/bench_fleetload.py --url amqp://guest:guest@127.0.0.1:5672/

Without --url (or PIHACE_TEST_AMQP_URL) a private RabbitMQ node is started with rabbitnode.py.

The watcher is the real command line, a snapshot of this tree's pihace.py run by this Python:
    pihace.py watch --url URL --state DIR/state.json --listen 127.0.0.1:PORT
                    --on-change DIR/hook.sh --on-change-states down,late,silent
Its standard output is a pipe (so it prints one line per change, flushed); this script reads
it in a thread and stamps each line with time.time() as it arrives. The hook (bash) appends
"device old new $EPOCHREALTIME" to DIR/hooks.txt.

The load is one process (a --worker of bench/.venv-pihace100's interpreter, pika 1.4.4, one
connection, no confirms): `--devices` devices with distinct names and hosts, each at its own
interval and phase, publish persistent reports (the JSON a pusher sends, ~600 bytes, built once
per device; only its timestamp is patched in) with message_id and a timestamp property, at
about the rate 100,000 devices at interval 60 s give (1,667/s). Per 1,000 devices a few are
"event" devices with a short interval (window/10 s, so that late and silent fit in the window),
on a schedule drawn from --seed, each at a random moment of the window's first half:
  down      its reports say Unavailable from then on; half of them Available again two
            reports later (down, then up: both caused by a report)
  late      stops reporting, and starts again halfway between late and silent (late, up)
  silent    stops reporting for good (late, then silent)
The other devices' intervals are spread around the mean that keeps the total rate at 1,667/s.
The warm-up is one longest interval (every device seen once: first reports are not changes);
then the measured window (--duration), then a tail of 10 s with no new events.

Measured:
  CPU of the watcher process (utime + stime from /proc/PID/stat, % of one core) over the
      window, and over the warm-up; the hooks' processes apart (cutime + cstime)
  RSS: VmRSS sampled every second (max over the window) and VmHWM at the end
  latency of each change a report causes: the generator's time.time() before the publish
      to the change line's arrival (p50, p99, max), and to the hook's start; for late and
      silent, from when the device's age crossed the limit (its last publish + the limit:
      includes the watcher's 1-second tick)
  exactly once: each scheduled change seen once in the change lines and, for down, late and
      silent, once in the hook file; any change not in the schedule is "invented"
  /metrics: a GET every 15 s from a thread of this script, timed to the last byte
The schedule (JSON lines) and the raw files are kept with --keep DIR.
"""

import argparse
import heapq
import http.client
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import common
from common import REPO, ensure_venv, identity_after, ours_identity, \
    ours_snapshots, print_rows

RATE = 100000 / 60.0  # reports per second: 100,000 devices at interval 60 s
QUEUE = "pihace.healthcheck"  # the watcher's default queue
HOOKED = ("down", "late", "silent")
SCRAPE_EVERY = 15.0
TAIL = 10.0


def limits(interval):
    """(late, silent) seconds of pihace's defaults: grace max(interval/2, 2), silent grace 4x."""
    grace = max(0.5 * interval, 2.0)
    return interval + grace, interval + 4 * grace


def fleet_plan(devices, window, seed):
    """[(name, host, kind, interval, phase, event offset in the window)] and the event interval.
    Kinds: "normal", "down", "down-up", "late", "silent"."""
    rng = random.Random(seed)
    event_interval = min(60.0, max(2.0, window / 10))
    per_thousand = max(4, round(40 * event_interval / 18))  # ~4 % at 3 min, fewer when quicker
    kinds = (["down-up"] * (per_thousand // 4) + ["down"] * (per_thousand // 4) +
             ["late"] * (per_thousand // 4) + ["silent"] * (per_thousand // 4))
    events = sum(1 for i in range(devices) if i % 1000 < len(kinds))
    normal_rate = max(RATE - events / event_interval, RATE / 10)
    mean = (devices - events) / normal_rate
    plan = []
    for i in range(devices):
        slot = i % 1000
        kind = kinds[slot] if slot < len(kinds) else "normal"
        interval = event_interval if kind != "normal" else round(rng.uniform(0.8, 1.2) * mean, 3)
        plan.append((f"sensor-{i:06d}", f"h{i:06d}.site-{i % 37:02d}.example", kind, interval,
                     rng.uniform(0, interval), rng.uniform(0.05, 0.45) * window))
    return plan, event_interval


PLACEHOLDER = "2027-01-15T08:00:00.000000Z"


def report_parts(name, host, status, interval):
    """A pusher's report as (bytes before its timestamp, bytes after)."""
    failing = {"db": "timeout after 5s"} if status == "Unavailable" else None
    report = {"status": status, "timestamp": PLACEHOLDER, "failure": failing,
              "rate": "3/3" if failing is None else "2/3", "duration": 0.012, "system": None,
              "component": {"name": name, "version": "2.7.1"},
              "checks": {check: {"status": "fail" if failing and check in failing else "pass",
                                 "duration_ms": 3.2, "attempts": 1, "message": None}
                         for check in ("db", "cache", "broker")},
              "host": host, "interval": interval}
    before, _, after = json.dumps(report, separators=(",", ":")).encode().partition(
        PLACEHOLDER.encode())
    return before, after


# ---------------------------------------------------------------------------
# the generator: a worker of the venv's interpreter (pika)
# ---------------------------------------------------------------------------

def work_generator(options):
    import pika

    devices, window, t0 = options["devices"], options["window"], options["t0"]
    plan, event_interval = fleet_plan(devices, window, options["seed"])
    warmup = max(p[3] for p in plan)
    window_start = t0 + warmup
    end = window_start + window + TAIL
    late_after, silent_after = limits(event_interval)
    up_parts = [report_parts(name, host, "Available", interval)
                for name, host, _, interval, _, _ in plan]
    down_parts = {i: report_parts(plan[i][0], plan[i][1], "Unavailable", plan[i][3])
                  for i in range(devices) if plan[i][2] in ("down", "down-up")}
    state = {}  # event devices: i -> what it does now
    schedule = []  # {"device", "old", "new", "at", "cause"}
    heap = [(t0 + phase, i) for i, (_, _, _, _, phase, _) in enumerate(plan)]
    heapq.heapify(heap)
    last_publish = {}

    connection = pika.BlockingConnection(pika.URLParameters(options["url"]))
    channel = connection.channel()
    Properties = pika.BasicProperties
    publish = channel.basic_publish
    gmtime, strftime, now_of = time.gmtime, time.strftime, time.time
    published = window_published = 0
    lags = []
    sequence = 0
    cpu_start = os.times()
    while True:
        now = now_of()
        if now >= end:
            break
        while heap and heap[0][0] <= now:
            due, i = heapq.heappop(heap)
            name, host, kind, interval, _, offset = plan[i]
            parts = up_parts[i]
            device = f"{name}@{host}"
            if kind != "normal" and now >= window_start:
                event_at = window_start + offset
                phase = state.get(i)
                if kind in ("down", "down-up"):
                    if phase is None and now >= event_at:
                        phase = state[i] = ["down", 0]
                        schedule.append({"device": device, "old": "up", "new": "down",
                                         "at": now, "cause": "report"})
                    if phase is not None and phase[0] == "down":
                        phase[1] += 1
                        if kind == "down-up" and phase[1] > 2:
                            phase[0] = "up"
                            schedule.append({"device": device, "old": "down", "new": "up",
                                             "at": now, "cause": "report"})
                        else:
                            parts = down_parts[i]
                elif phase is None and now >= event_at:  # late or silent: stops here
                    last = last_publish[i]
                    state[i] = "stopped"
                    schedule.append({"device": device, "old": "up", "new": "late",
                                     "at": last + late_after, "cause": "age"})
                    if kind == "silent":
                        schedule.append({"device": device, "old": "late", "new": "silent",
                                         "at": last + silent_after, "cause": "age"})
                        continue  # never again
                    heapq.heappush(heap, (last + (late_after + silent_after) / 2, i))
                    continue
                elif phase == "stopped":  # a late device back
                    state[i] = "back"
                    schedule.append({"device": device, "old": "late", "new": "up",
                                     "at": now, "cause": "report"})
            sequence += 1
            stamp = strftime("%Y-%m-%dT%H:%M:%S", gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
            body = parts[0] + stamp.encode() + parts[1]
            now = now_of()
            publish("", QUEUE, body, Properties(
                content_type="application/json", delivery_mode=2, timestamp=int(now),
                message_id=f"{i}-{sequence}", app_id=name))
            last_publish[i] = now
            published += 1
            if window_start <= now < window_start + window:
                window_published += 1
                lags.append(now - due)
            heapq.heappush(heap, (due + interval, i))
        wait = (heap[0][0] if heap else end) - now_of()
        connection.process_data_events(time_limit=min(max(wait, 0), 0.05))
    cpu = os.times()
    connection.close()
    lags.sort()
    expected_rate = sum(1 / p[3] for p in plan)
    with open(options["schedule"], "w") as out:
        for event in schedule:
            out.write(json.dumps(event) + "\n")
    print(json.dumps({
        "file": pika.__file__, "version": pika.__version__, "published": published,
        "window_published": window_published, "rate": window_published / window,
        "expected_rate": expected_rate, "warmup": warmup, "window_start": window_start,
        "end": end, "event_interval": event_interval,
        "events": sum(1 for p in plan if p[2] != "normal"),
        "lag_p50_ms": lags[len(lags) // 2] * 1000 if lags else None,
        "lag_p99_ms": lags[len(lags) * 99 // 100] * 1000 if lags else None,
        "lag_max_ms": lags[-1] * 1000 if lags else None,
        "cpu": (cpu.user + cpu.system) - (cpu_start.user + cpu_start.system),
        "elapsed": end - t0}), flush=True)


def worker(name, options):
    if name == "generator":
        work_generator(options)
    else:
        raise SystemExit(f"unknown worker {name!r}")


# ---------------------------------------------------------------------------
# the parent: the broker, the watcher, the generator, the clocks
# ---------------------------------------------------------------------------

def proc_stat(pid):
    """(utime + stime, cutime + cstime) in seconds, of process `pid`."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def proc_memory(pid):
    """{VmRSS, VmHWM} in MB."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(line.split()[1]) / 1024
    return values


class Watch:
    """`pihace.py watch` in a session of its own; its stdout lines, stamped as they come."""

    def __init__(self, snapshot, url, folder, port, state=True):
        self.hooks = os.path.join(folder, "hooks.txt")
        hook = os.path.join(folder, "hook.sh")
        with open(hook, "w") as script:
            script.write('#!/bin/bash\nprintf "%s %s %s %s\\n" "$PIHACE_DEVICE" '
                         f'"$PIHACE_OLD_STATE" "$PIHACE_NEW_STATE" "$EPOCHREALTIME" >> '
                         f'{self.hooks}\n')
        os.chmod(hook, 0o755)
        self.state = os.path.join(folder, "state.json")
        self.stderr = open(os.path.join(folder, "watch.stderr"), "w+")
        self.argv = [sys.executable, os.path.join(snapshot, "pihace.py"), "watch", "--url", url,
                     *(("--state", self.state) if state else ()), "--listen",
                     f"127.0.0.1:{port}", "--on-change", hook, "--on-change-states",
                     ",".join(HOOKED)]
        env = common.env_for()
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        self.process = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=self.stderr,
                                        env=env, cwd=folder, start_new_session=True)
        self.pid, self.lines = self.process.pid, []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append((time.time(), line.decode(errors="replace").rstrip("\n")))

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.reader.join(5)

    def error(self):
        self.stderr.seek(0)
        return self.stderr.read()[-3000:]


def get(port, path, timeout=30):
    """(status, bytes read, seconds from request to last byte)."""
    start = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        size = 0
        while True:
            piece = response.read(1 << 20)
            if not piece:
                break
            size += len(piece)
        body_status = response.status
    finally:
        connection.close()
    return body_status, size, time.perf_counter() - start


def wait_connected(watch, port, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if watch.process.poll() is not None:
            raise SystemExit(f"pihace watch exited:\n{watch.error()}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/devices?limit=1")
            document = json.loads(connection.getresponse().read())
            connection.close()
            if document["watcher"]["connected"]:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.3)
    raise SystemExit(f"pihace watch did not connect in time:\n{watch.error()}")


class Sampler:
    """CPU and memory of the watcher every second; /metrics every 15 s."""

    def __init__(self, pid, port, scrape_every=SCRAPE_EVERY):
        self.pid, self.port, self.scrape_every = pid, port, scrape_every
        self.samples = []  # (time, cpu, children's cpu, VmRSS, VmHWM)
        self.scrapes = []  # (time, status, size, seconds)
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self._sample, daemon=True),
                        threading.Thread(target=self._scrape, daemon=True)]
        for thread in self.threads:
            thread.start()

    def _sample(self):
        while True:
            try:
                cpu, children = proc_stat(self.pid)
                memory = proc_memory(self.pid)
            except (OSError, IndexError):
                return
            self.samples.append((time.time(), cpu, children, memory["VmRSS"], memory["VmHWM"]))
            if self.done.wait(1.0):
                return

    def _scrape(self):
        while self.scrape_every and not self.done.wait(self.scrape_every):
            when = time.time()
            try:
                status, size, seconds = get(self.port, "/metrics", timeout=60)
            except OSError as exc:
                status, size, seconds = type(exc).__name__, 0, None
            self.scrapes.append((when, status, size, seconds))

    def stop(self):
        self.done.set()
        for thread in self.threads:
            thread.join(70)

    def at(self, when):
        """The sample nearest after `when`."""
        return next((s for s in self.samples if s[0] >= when), self.samples[-1])


def parse_changes(lines):
    """[(arrival, device, old, new)] of the watcher's change lines."""
    changes = []
    for arrival, line in lines:
        words = line.split()
        if len(words) >= 5 and words[3] == "->":
            changes.append((arrival, words[1], None if words[2] == "-" else words[2], words[4]))
    return changes


def parse_hooks(path):
    hooks = []
    try:
        with open(path) as file:
            for line in file:
                words = line.split()
                if len(words) == 4:
                    hooks.append((float(words[3]), words[0], words[1] or None, words[2]))
                elif len(words) == 3:  # an empty old state
                    hooks.append((float(words[2]), words[0], None, words[1]))
    except FileNotFoundError:
        pass
    return hooks


def match(schedule, observed, until, end):
    """Each scheduled change (at < until) against the observed ones (before `end`, when the
    generator stopped: after it, every device it left goes late in its turn): (latencies by
    cause, missed, seen twice or more, invented)."""
    expected = {}
    for event in schedule:
        if event["at"] < until:
            expected.setdefault((event["device"], event["old"], event["new"]), []).append(event)
    seen = {}
    for arrival, device, old, new in observed:
        if arrival >= end:
            continue
        seen.setdefault((device, old, new), []).append(arrival)
    latencies = {"report": [], "age": []}
    missed = twice = 0
    for key, events in expected.items():
        arrivals = seen.get(key, [])
        if len(arrivals) < len(events):
            missed += len(events) - len(arrivals)
        elif len(arrivals) > len(events):
            twice += len(arrivals) - len(events)
        for event, arrival in zip(events, sorted(arrivals)):
            latencies[event["cause"]].append(arrival - event["at"])
    invented = [(key, arrivals) for key, arrivals in seen.items() if key not in expected]
    return latencies, missed, twice, invented


def quantiles(values):
    if not values:
        return None, None, None
    values = sorted(values)
    return (values[len(values) // 2] * 1000, values[min(len(values) - 1, len(values) * 99 // 100)]
            * 1000, values[-1] * 1000)


def run(args, url, notes, snapshot, folder):
    sys.path.insert(0, REPO)
    from rabbitnode import free_port

    port = free_port()
    watch = Watch(snapshot, url, folder, port, state=not args.no_state)
    sampler = None
    try:
        wait_connected(watch, port)
        sampler = Sampler(watch.pid, port, args.scrape_every)
        t0 = time.time() + 1.0
        options = {"url": url, "devices": args.devices, "window": args.duration,
                   "seed": args.seed, "t0": t0, "schedule": os.path.join(folder, "schedule.jsonl")}
        print(f"generator: {args.devices:,} devices; warm-up, then {args.duration:g} s measured "
              "...", file=sys.stderr)
        generator = common.run_worker(__file__, "generator", options, common.env_for(),
                                      timeout=args.duration + 600)
        time.sleep(3)  # the last changes' lines and hooks
        sampler.stop()
        memory_end = proc_memory(watch.pid)
    finally:
        if sampler is not None:
            sampler.stop()
        watch.stop()
    with open(options["schedule"]) as file:
        schedule = [json.loads(line) for line in file]
    watch.hook_lines = parse_hooks(watch.hooks)
    return watch, sampler, generator, schedule, memory_end, t0


def report(args, results, header):
    watch, sampler, generator, schedule, memory_end, t0 = results
    start, stop = generator["window_start"], generator["window_start"] + args.duration
    first, last = sampler.at(start), sampler.at(stop)
    begin = sampler.samples[0]
    cpu = (last[1] - first[1]) / (last[0] - first[0]) * 100
    cpu_warm = (first[1] - begin[1]) / (first[0] - begin[0]) * 100
    children = (last[2] - first[2]) / (last[0] - first[0]) * 100
    in_window = [s for s in sampler.samples if start <= s[0] <= stop]
    rss_max = max(s[3] for s in in_window)
    rss_median = statistics.median(s[3] for s in in_window)
    until = generator["end"] - 2.0  # changes due later may not have happened yet
    changes = parse_changes(watch.lines)
    hooks = watch.hook_lines
    lat, missed, twice, invented = match(schedule, changes, until, generator["end"])
    hooked = [event for event in schedule if event["new"] in HOOKED]
    hlat, hmissed, htwice, hinvented = match(hooked, hooks, until, generator["end"])
    scrapes = [s for s in sampler.scrapes if start <= s[0] <= stop]
    scrape_seconds = [s[3] for s in scrapes if s[3] is not None]
    scrape_bad = [s for s in scrapes if s[1] != 200]
    due = sum(1 for event in schedule if event["at"] < until)
    r50, r99, rmax = quantiles(lat["report"])
    a50, a99, amax = quantiles(lat["age"])
    h50, h99, hmax = quantiles(hlat["report"])
    g50, g99, gmax = quantiles(hlat["age"])

    def verdict(met):
        return "met" if met else "MISSED"

    rows = [("figure", "value", "target", "")]
    rows += [
        ("reports published in the window, per second", f"{generator['rate']:,.0f}",
         f"{RATE:,.0f}", verdict(generator["rate"] >= 0.95 * RATE)),
        ("  generator's lag behind its schedule: p99 / max, ms",
         f"{common.fmt(generator['lag_p99_ms'], 1)} / {common.fmt(generator['lag_max_ms'], 1)}",
         "", ""),
        ("watcher CPU over the window, % of one core", f"{cpu:.1f}", "<= 10",
         verdict(cpu <= 10)),
        ("  over the warm-up (100,000 devices first seen), %", f"{cpu_warm:.1f}", "", ""),
        ("  its hooks' processes (cutime + cstime), %", f"{children:.1f}", "", ""),
        ("watcher VmRSS in the window: max / median, MB", f"{rss_max:.0f} / {rss_median:.0f}",
         "<= 100", verdict(rss_max <= 100)),
        ("  VmHWM at the end of the run, MB", f"{memory_end['VmHWM']:.0f}", "<= 100",
         verdict(memory_end["VmHWM"] <= 100)),
        ("publish -> change line (report caused): p50 / p99 / max, ms",
         f"{common.fmt(r50, 1)} / {common.fmt(r99, 1)} / {common.fmt(rmax, 1)}", "p99 <= 250",
         verdict(r99 is not None and r99 <= 250)),
        ("publish -> hook started (down): p50 / p99 / max, ms",
         f"{common.fmt(h50, 1)} / {common.fmt(h99, 1)} / {common.fmt(hmax, 1)}", "", ""),
        ("age limit -> change line (late, silent): p50 / p99 / max, ms",
         f"{common.fmt(a50, 1)} / {common.fmt(a99, 1)} / {common.fmt(amax, 1)}",
         "(1 s tick)", ""),
        ("  -> hook started: p50 / p99 / max, ms",
         f"{common.fmt(g50, 1)} / {common.fmt(g99, 1)} / {common.fmt(gmax, 1)}", "", ""),
        ("scheduled changes due / missed / seen twice / invented (change lines)",
         f"{due:,} / {missed} / {twice} / {sum(len(a) for _, a in invented)}",
         "exactly once", verdict(not missed and not twice and not invented)),
        ("scheduled down, late, silent / missed / twice / invented (hook file)",
         f"{sum(1 for e in hooked if e['at'] < until):,} / {hmissed} / {htwice} / "
         f"{sum(len(a) for _, a in hinvented)}", "exactly once",
         verdict(not hmissed and not htwice and not hinvented)),
        ("/metrics scrapes in the window: count, failed", f"{len(scrapes)}, {len(scrape_bad)}",
         f"every {args.scrape_every:g} s" if args.scrape_every else "none asked", ""),
        ("  time to last byte: median / max, s",
         f"{statistics.median(scrape_seconds) if scrape_seconds else 0:.2f} / "
         f"{max(scrape_seconds) if scrape_seconds else 0:.2f}", "each < 0.5",
         verdict(bool(scrape_seconds) and max(scrape_seconds) < 0.5 and not scrape_bad)
         if args.scrape_every else ""),
        ("  size, MB", f"{scrapes[-1][2] / 1e6:.1f}" if scrapes else "-", "", ""),
    ]
    print()
    for line in header:
        print(line)
    print()
    print_rows(rows, right=(1,))
    print()
    counts = {}
    for event in schedule:
        counts[f"{event['old']}->{event['new']}"] = counts.get(
            f"{event['old']}->{event['new']}", 0) + 1
    print(f"- Fleet: {args.devices:,} devices, {generator['events']:,} of them event devices "
          f"(interval {generator['event_interval']:g} s); warm-up {generator['warmup']:.0f} s, "
          f"window {args.duration:g} s, tail {TAIL:g} s; {generator['published']:,} reports "
          f"published in all (the plan's rate: {generator['expected_rate']:,.0f}/s). Schedule "
          f"(seed {args.seed}): " + ", ".join(f"{n:,} {k}" for k, n in sorted(counts.items()))
          + ".")
    print(f"- The watcher's command line: {' '.join(watch.argv[2:])} (the URL, the folder "
          "and the port are the run's).")
    print(f"- The generator (pika {generator['version']}, one process) used "
          f"{generator['cpu'] / generator['elapsed'] * 100:.0f} % of a core.")
    if invented:
        shown = ", ".join(f"{d} {o}->{n} x{len(a)}" for (d, o, n), a in invented[:5])
        print(f"- Invented changes (first 5): {shown}")
    slow = [s for s in scrapes if s[3] is not None and s[3] >= 0.5]
    if slow:
        print(f"- Scrapes at or over 0.5 s: {len(slow)} of {len(scrapes)}: "
              + ", ".join(f"{s[3]:.2f}" for s in slow[:10]))
    for when, status, size, seconds in scrape_bad[:3]:
        print(f"- A failed scrape at {when - start:+.0f} s: {status}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="30 s measured")
    parser.add_argument("--duration", type=float, help="seconds measured (default 180)")
    parser.add_argument("--devices", type=int, default=100000, help="devices (100,000)")
    parser.add_argument("--seed", type=int, default=29, help="the schedule's seed (29)")
    parser.add_argument("--url", help="an existing broker (else a private node)")
    parser.add_argument("--pihace", metavar="FILE", help="watch with this pihace.py instead")
    parser.add_argument("--scrape-every", type=float, default=SCRAPE_EVERY, metavar="SECONDS",
                        help="GET /metrics this often (default 15; 0: never, to see what "
                        "scrapes cost)")
    parser.add_argument("--no-state", action="store_true",
                        help="run the watcher without --state, to see what the state file costs")
    parser.add_argument("--keep", metavar="DIR", help="copy the schedule, hook file, change "
                        "lines and the watcher's stderr to DIR")
    parser.add_argument("--worker", nargs=2, metavar=("NAME", "JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker[0], json.loads(args.worker[1]))
        return 0
    args.duration = args.duration or (30.0 if args.quick else 180.0)
    common.stop_on_sigterm()
    ensure_venv("pika")
    identity = ours_identity() if not args.pihace else os.path.abspath(args.pihace)
    loads = [os.getloadavg()]
    started = time.monotonic()
    with common.broker(args.url, name="pihace-fleetload") as (url, notes), \
            ours_snapshots() as (snapshot, _), tempfile.TemporaryDirectory() as folder:
        if args.pihace:
            shutil.copy(args.pihace, os.path.join(snapshot, "pihace.py"))
        results = run(args, url, notes, snapshot, folder)
        loads.append(os.getloadavg())
        if args.keep:
            os.makedirs(args.keep, exist_ok=True)
            for name in ("schedule.jsonl", "hooks.txt", "watch.stderr"):
                if os.path.exists(os.path.join(folder, name)):
                    shutil.copy(os.path.join(folder, name), args.keep)
            with open(os.path.join(args.keep, "changes.txt"), "w") as out:
                out.writelines(f"{when:.6f} {line}\n" for when, line in results[0].lines)
            with open(os.path.join(args.keep, "scrapes.txt"), "w") as out:
                out.writelines(f"{when:.6f} {status} {size} {seconds}\n"
                               for when, status, size, seconds in results[1].scrapes)
    commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    header = [f"pihace watch ({REPO}, HEAD {commit}) under a fleet of {args.devices:,} devices, "
              f"one run, {time.monotonic() - started:.0f} s",
              f"pihace.py: {identity_after(identity) if not args.pihace else identity}",
              common.machine_and_loads(loads)] + notes
    report(args, results, header)
    common.print_load_note(loads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
