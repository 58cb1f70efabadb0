#!/usr/bin/env python3
"""Benchmark: an AMQPPusher's memory while a broker floods it with frames it did not ask for.

    python3 bench/bench_flood.py                     # 30 s per flood, about 7 minutes
    python3 bench/bench_flood.py --quick             # 5 s per flood, under 2 minutes
    python3 bench/bench_flood.py --baseline e293787  # the "before" revision (this is the default)
    python3 bench/bench_flood.py --kinds select-ok,blocked --seconds 60

Issue #12: a broker, or anyone in the middle of a plain amqp:// connection, that floods
Confirm.Select-Ok, Basic.Ack or Basic.Return frames made the client grow without limit (772 MB
after 30 s), and a Connection.Blocked/Unblocked flood gave 137,454 warning lines in 5 s. Done
when the memory stays within 10 MB of its level at the start of a 30 s flood.

For each flood kind and each pihace.py (this tree's, and --baseline's), a fake broker on
127.0.0.1 (threads of this process, frames written by hand) plays RabbitMQ's part: the handshake
(Connection.Start, Tune, Open-Ok, Channel.Open-Ok, Confirm.Select-Ok, Queue.Declare-Ok), a
Basic.Ack for every message published, Close-Ok. Once a connection has declared its queue (for
the multiple-Ack kind: once its first message is confirmed), the broker also floods it with one
kind of frame, as fast as the client reads, between its own answers; connections opened later
in the flood's window are flooded too:

    none          no flood: the reference
    select-ok     Confirm.Select-Ok, again and again
    ack-unknown   Basic.Ack of delivery tags never published (1,000,000 and counting up)
    ack-multiple  Basic.Ack multiple=1 of the last tag already confirmed (harmless: nothing to
                  confirm, nothing may grow either)
    return        Basic.Return of unknown message ids (flood-N), each with its content header
                  and a 256-byte body
    blocked       Connection.Blocked ("low on memory") and Connection.Unblocked, in turn

The pusher, AMQPPusher(hc, url, timeout=10).push_forever_in_loop(1), runs in a subprocess of
this interpreter (this file with --worker, a snapshot of pihace.py first on its path, psutil
blocked), its own session. This process reads the worker's VmRSS from /proc at the flood's first
byte and its VmHWM (peak RSS) when the window ends; a worker above --rss-cap is stopped early. The
worker counts what push() returned and what pihace logged (a handler that only counts and keeps a
few samples), and reports them after stop(). This file is stdlib-only (with common.py): no venv.
"""

import argparse
import collections
import json
import logging
import os
import re
import select
import socket
import struct
import sys
import threading
import time

import common
from common import BENCH, fmt, identity_after, machine, ours_identity, ours_snapshots, print_rows

KINDS = {  # name: the row's label
    "none": "no flood (reference)",
    "select-ok": "Confirm.Select-Ok",
    "ack-unknown": "Basic.Ack, tags never published",
    "ack-multiple": "Basic.Ack multiple, tag confirmed",
    "return": "Basic.Return, unknown ids",
    "blocked": "Blocked/Unblocked",
}
SECONDS = 30.0  # of flood, per kind and pihace.py
INTERVAL = 1  # seconds between reports
TIMEOUT = 10.0  # the pusher's timeout
QUEUE = "bench.flood"
RSS_CAP = 2048  # MB: a worker above this is stopped before its window ends
TARGET_MB = 10.0  # growth allowed during a flood
STOP_WAIT = 15.0  # seconds a worker waits for its loop to end after stop()
SAMPLE = 0.1  # seconds between two reads of the worker's VmRSS
MB = 1 << 20

# ---------------------------------------------------------------------------
# frames, by hand (independent of the code measured)
# ---------------------------------------------------------------------------

_frame_head = struct.Struct(">BHI")
PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_MAX = 131072


def frame(frame_type, channel, payload):
    return _frame_head.pack(frame_type, channel, len(payload)) + payload + b"\xce"


def method(channel, class_id, method_id, arguments=b""):
    return frame(1, channel, struct.pack(">HH", class_id, method_id) + arguments)


def shortstr(text):
    data = text.encode()
    return bytes([len(data)]) + data


def longstr(data):
    return struct.pack(">I", len(data)) + data


START = method(0, 10, 10, b"\x00\x09" + longstr(b"\x07productS" + longstr(b"bench_flood"))
               + longstr(b"PLAIN") + longstr(b"en_US"))
TUNE = method(0, 10, 30, struct.pack(">HIH", 2047, FRAME_MAX, 60))
OPEN_OK = method(0, 10, 41, shortstr(""))
CLOSE_OK = method(0, 10, 51)
SELECT_OK = method(1, 85, 11)
EXCHANGE_DECLARE_OK = method(1, 40, 11)
BLOCKED = method(0, 10, 60, shortstr("low on memory"))
UNBLOCKED = method(0, 10, 61)
RETURN = method(1, 60, 50, struct.pack(">H", 312) + shortstr("NO_ROUTE") + shortstr("")
                + shortstr(QUEUE))
BODY = frame(3, 1, b"x" * 256)
_ACK_HEAD = _frame_head.pack(1, 1, 13) + struct.pack(">HH", 60, 80)
_tag = struct.Struct(">Q")
CHUNK = 1 << 16  # bytes of flood queued at a time: the broker's answers wait behind at most this


def ack(tag, multiple=False):
    return _ACK_HEAD + _tag.pack(tag) + bytes([multiple]) + b"\xce"


def returned(message_id):
    """A Basic.Return with its content header (message_id set) and body."""
    header = frame(2, 1, struct.pack(">HHQ", 60, 0, 256) + b"\x00\x80" + shortstr(message_id))
    return RETURN + header + BODY


def repeated(unit, frames=1):
    """(about CHUNK bytes of `unit`, which holds `frames` frames, repeated; how many frames)."""
    count = max(1, CHUNK // len(unit))
    return unit * count, count * frames


# ---------------------------------------------------------------------------
# the fake broker: threads of the parent
# ---------------------------------------------------------------------------

class FloodBroker:
    """RabbitMQ's part on 127.0.0.1, one thread per connection, flooding `kind` while
    `flooding` is set. on_flood_start() is called once, before the first byte of flood."""

    def __init__(self, kind, on_flood_start):
        self.kind, self.on_flood_start = kind, on_flood_start
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.url = f"amqp://guest:guest@127.0.0.1:{self.listener.getsockname()[1]}/"
        self.flooding = threading.Event()
        self.flooding.set()
        self.closing = threading.Event()
        self._lock = threading.Lock()
        self._started = False
        self._next = 1_000_000  # the next tag, or message id, never used
        self._fixed = {"select-ok": repeated(SELECT_OK),
                       "blocked": repeated(BLOCKED + UNBLOCKED, 2)}.get(kind)
        self._multiple = (None, None)  # (tag, chunk) for ack-multiple
        self.counts = collections.Counter()  # connections, handshakes, published, units, bytes
        self.errors = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def close(self):
        self.closing.set()
        for thread in list(self._threads):
            thread.join(5)
        self.listener.close()

    def _accept(self):
        while not self.closing.is_set():
            try:
                sock, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self.counts["connections"] += 1
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _start_flood(self):
        with self._lock:
            first, self._started = not self._started, True
        if first:
            self.on_flood_start()

    def _chunk(self, acked):
        """(about CHUNK bytes of whole flood frames, how many: a Basic.Return with its content
        counts once)."""
        if self._fixed is not None:
            return self._fixed
        if self.kind == "ack-multiple":
            if self._multiple[0] != acked:
                self._multiple = (acked, repeated(ack(acked, True)))
            return self._multiple[1]
        count = 3000 if self.kind == "ack-unknown" else 180
        with self._lock:
            first, self._next = self._next, self._next + count
        if self.kind == "ack-unknown":
            return b"".join(map(ack, range(first, first + count))), count
        return b"".join(returned(f"flood-{n}") for n in range(first, first + count)), count

    def _serve(self, sock):
        sock.setblocking(False)
        inbox, out = bytearray(), bytearray()
        greeted = closing = confirming = flooding_here = False
        body_left = acked = 0  # body bytes of the message coming; the channel's last tag acked
        try:
            while not self.closing.is_set() and not (closing and not out):
                flood = flooding_here and self.flooding.is_set() and not closing
                readable, writable, _ = select.select([sock], [sock] if out or flood else [],
                                                      [], 0.05)
                if readable:
                    data = sock.recv(1 << 16)
                    if not data:
                        return
                    inbox += data
                    if not greeted:
                        if len(inbox) < 8:
                            continue
                        if inbox[:8] != PROTOCOL_HEADER:
                            raise ValueError(f"protocol header {bytes(inbox[:8])!r}")
                        del inbox[:8]
                        out += START
                        greeted = True
                    while len(inbox) >= 8:
                        frame_type, channel, size = _frame_head.unpack_from(inbox)
                        if len(inbox) < size + 8:
                            break
                        payload = bytes(inbox[7:7 + size])
                        del inbox[:size + 8]
                        published = False
                        if frame_type == 2:  # a content header: the body size
                            body_left = struct.unpack_from(">Q", payload, 4)[0]
                            published = body_left == 0
                        elif frame_type == 3:
                            body_left -= size
                            published = body_left == 0
                        elif frame_type == 1:
                            key = struct.unpack_from(">HH", payload)
                            if key == (10, 11):  # Start-Ok
                                out += TUNE
                            elif key == (10, 40):  # Connection.Open
                                out += OPEN_OK
                            elif key == (10, 50):  # Connection.Close
                                out += CLOSE_OK
                                closing = True
                            elif key == (10, 51):  # Close-Ok
                                return
                            elif key == (20, 10):  # Channel.Open
                                out += method(channel, 20, 11, longstr(b""))
                            elif key == (20, 40):  # Channel.Close
                                out += method(channel, 20, 41)
                                confirming, acked = False, 0
                            elif key == (85, 10):  # Confirm.Select
                                out += SELECT_OK
                                confirming = True
                            elif key == (40, 10):  # Exchange.Declare
                                out += EXCHANGE_DECLARE_OK
                            elif key == (50, 10):  # Queue.Declare: ticket, then the name
                                queue = payload[7:7 + payload[6]]
                                out += method(channel, 50, 11, bytes([len(queue)]) + queue
                                              + b"\x00" * 8)
                                with self._lock:
                                    self.counts["handshakes"] += 1
                                if self.kind != "ack-multiple":
                                    flooding_here = True
                                    self._start_flood()
                        if published:
                            with self._lock:
                                self.counts["published"] += 1
                            if confirming:
                                acked += 1
                                out += ack(acked)
                                if self.kind == "ack-multiple" and not flooding_here:
                                    flooding_here = True
                                    self._start_flood()
                if writable:
                    if flood and self.kind != "none" and len(out) < CHUNK:
                        chunk, units = self._chunk(acked)
                        out += chunk
                        with self._lock:
                            self.counts["units"] += units
                            self.counts["bytes"] += len(chunk)
                    if out:
                        try:
                            sent = sock.send(out)
                        except BlockingIOError:
                            sent = 0
                        del out[:sent]
        except OSError:  # the client dropped the connection (reset, broken pipe)
            return
        except Exception as exc:  # a bug of this broker: the run stops with it
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            sock.close()


# ---------------------------------------------------------------------------
# worker: a subprocess with one pihace.py on its path
# ---------------------------------------------------------------------------

class CountingHandler(logging.Handler):
    """Counts pihace's log records by level; keeps the first and last warnings, not the rest."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.counts = collections.Counter()
        self.first, self.last = [], collections.deque(maxlen=2)

    def emit(self, record):
        self.counts[record.levelname] += 1
        if record.levelno >= logging.WARNING:
            text = record.getMessage()[:300]
            (self.first if len(self.first) < 4 else self.last).append(text)


def work_flood(options):
    """The worker's side: ready, then the loop until the parent says stop (or is gone)."""
    channel = os.fdopen(os.dup(1), "w", buffering=1)  # the parent reads only this
    os.dup2(2, 1)
    threading.Timer(options["limit"], os._exit, (3,)).start()  # bounded, whatever happens

    def send(**message):
        channel.write(json.dumps(message) + "\n")

    sys.modules["psutil"] = None  # as the other benchmarks run pihace.py; with_system=False
    import pihace

    handler = CountingHandler()
    logger = logging.getLogger("pihace")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    hc = pihace.HealthCheck(with_system=False)
    hc.register("ok", lambda: True)
    pusher = pihace.AMQPPusher(hc, options["url"], QUEUE, timeout=TIMEOUT)
    results, push = collections.Counter(), pusher.push

    def counted_push():
        started = time.monotonic()
        result = push()
        took = time.monotonic() - started
        # the reason without the URL, tags and ids of the flood (1000000 and up): grouped
        key = "ok" if result is True else re.sub(r"\d{7,}", "<n>", re.sub(
            r" \(amqp://[^)]*\)$", "", result[1]))[:160]
        results[key] += 1
        results[f"seconds:{key}"] += took
        return result

    pusher.push = counted_push  # the loop calls self.push()
    loop = threading.Thread(target=pusher.push_forever_in_loop, args=(INTERVAL,), daemon=True)
    send(file=pihace.__file__)
    loop.start()
    sys.stdin.readline()  # "stop", or nothing once the parent is gone
    started = time.monotonic()
    pusher.stop()
    loop.join(STOP_WAIT)
    stop_s = time.monotonic() - started
    pushes = {key: value for key, value in results.items() if not key.startswith("seconds:")}
    seconds = {key[8:]: value for key, value in results.items() if key.startswith("seconds:")}
    send(pushes=pushes, seconds=seconds, logs=dict(handler.counts), first=handler.first,
         last=list(handler.last), stopped=not loop.is_alive(), stop_s=stop_s,
         connections_opened=getattr(pusher, "connections_opened", None))
    channel.close()
    os._exit(0)


# ---------------------------------------------------------------------------
# parent: trials, table
# ---------------------------------------------------------------------------

def memory(pid):
    """(VmRSS, VmHWM) of process `pid`, in bytes."""
    with open(f"/proc/{pid}/status") as status:
        fields = dict(line.split(":", 1) for line in status if ":" in line)
    return tuple(int(fields[key].split()[0]) * 1024 for key in ("VmRSS", "VmHWM"))


def cpu_seconds(pid):
    """User and system CPU time of process `pid` so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Worker(common.WorkerProcess):
    """The pusher's subprocess, driven line by line (see common.WorkerProcess)."""

    def __init__(self, url, folder, limit):
        options = {"url": url, "limit": limit}
        super().__init__(
            [sys.executable, os.path.abspath(__file__), "--worker", "flood", json.dumps(options)],
            common.env_for(folder), BENCH)


def trial(kind, folder, seconds, rss_cap):
    """One flood against one pihace.py: what was measured, as a dict."""
    marks = {}
    worker = None

    def on_flood_start():  # in the broker's thread, before the first byte of flood
        marks["start"] = time.monotonic()
        marks["rss"], marks["hwm"] = memory(worker.pid)
        marks["cpu"] = cpu_seconds(worker.pid)

    broker = FloodBroker(kind, on_flood_start)
    try:
        worker = Worker(broker.url, folder, limit=seconds + 120)
        ready = worker.receive(60, "once started")
        if not ready["file"].startswith(folder + os.sep):
            raise SystemExit(f"the worker measured {ready['file']}, not {folder}")
        deadline = time.monotonic() + 60
        while "start" not in marks:
            if time.monotonic() > deadline or worker.process.poll() is not None:
                raise SystemExit(f"{kind}: no connection reached the flood in time:\n"
                                 f"{worker.error()}\n{broker.errors}")
            time.sleep(0.01)
        end, capped, rss_max = marks["start"] + seconds, None, marks["rss"]
        while time.monotonic() < end:
            time.sleep(min(SAMPLE, max(0.0, end - time.monotonic())))
            if worker.process.poll() is not None:
                raise SystemExit(f"{kind}: the worker ended during the flood:\n{worker.error()}")
            rss_max = max(rss_max, memory(worker.pid)[0])
            if rss_max > rss_cap * MB:
                capped = time.monotonic() - marks["start"]
                break
        rss, hwm = memory(worker.pid)
        cpu = cpu_seconds(worker.pid) - marks["cpu"]
        flooded = time.monotonic() - marks["start"]
        counts = dict(broker.counts)
        done = None
        if capped is None:  # stopped while the flood goes on: its last flush and close count
            worker.send("stop")
            done = worker.receive(STOP_WAIT + 30, "after stop()")
        broker.flooding.clear()
        if broker.errors:
            raise SystemExit(f"the fake broker failed: {broker.errors}")
        return {"kind": kind, "start_rss": marks["rss"], "start_hwm": marks["hwm"], "rss": rss,
                "hwm": hwm, "capped": capped, "flooded": flooded, "cpu": cpu, "broker": counts,
                "worker": done}
    finally:
        if worker is not None:
            worker.kill()
        broker.close()


def _mb(value):
    return f"{value / MB:,.1f}"


def _millions(value):
    return f"{value / 1e6:.2f} M" if value >= 1e5 else f"{value:,}"


def describe(result):
    """What the pusher did, in a few words, and its most common failure."""
    done = result["worker"]
    if done is None:
        return f"stopped at {result['capped']:.1f} s: above --rss-cap", None
    pushes = done["pushes"]
    total = sum(pushes.values())
    failures = sorted(((count, reason) for reason, count in pushes.items() if reason != "ok"),
                      reverse=True)
    what = f"{pushes.get('ok', 0)}/{total} pushes ok"
    reconnects = result["broker"].get("connections", 0) - 1
    what += f", {reconnects} reconnection{'s' if reconnects != 1 else ''}"
    if not done["stopped"]:
        what += ", loop still running after stop()"
    top = None
    if failures:
        count, reason = failures[0]
        took = done["seconds"][reason] / count
        top = f"{count} x '{reason}' (push() took {took * 1000:,.0f} ms on average)"
    return what, top


def print_table(results, header_lines, seconds, baseline, notes):
    names = {"this tree": "this tree", "before": f"before ({baseline})"}
    lines = [("flood", "pihace.py", "RSS at start", "peak RSS", "peak - start", "flood sent",
              "warnings", "CPU s", "what the pusher did")]
    tops, verdict = [], True
    for kind in dict.fromkeys(result["kind"] for _, result in results):
        for index, (version, result) in enumerate(r for r in results if r[1]["kind"] == kind):
            growth = result["hwm"] - result["start_rss"]
            if version == "this tree" and growth > TARGET_MB * MB:
                verdict = False
            done = result["worker"]
            warnings = "-" if done is None else f"{done['logs'].get('WARNING', 0):,}"
            flood = "-" if kind == "none" else (
                f"{_millions(result['broker'].get('units', 0))} "
                f"({_mb(result['broker'].get('bytes', 0))} MB)")
            what, top = describe(result)
            lines.append((KINDS[kind] if index == 0 else "", names[version],
                          f"{_mb(result['start_rss'])} MB", f"{_mb(result['hwm'])} MB",
                          f"{'+' if growth >= 0 else ''}{_mb(growth)} MB"
                          + (" (capped)" if result["capped"] is not None else ""),
                          flood, warnings, fmt(result["cpu"], 1), what))
            if top:
                tops.append(f"  {KINDS[kind]}, {names[version]}: {top}")
    print()
    for line in header_lines:
        print(line)
    print()
    print_rows(lines, right=(2, 3, 4, 5, 6, 7))
    print()
    print(f"target (this tree): peak RSS at most {TARGET_MB:g} MB above the RSS at the flood's "
          f"start, in every flood: {'met' if verdict else 'MISSED'}")
    print(f"- Each flood lasts {seconds:g} s from its first byte, while the pusher runs "
          f"push_forever_in_loop({INTERVAL}) with timeout={TIMEOUT:g}. RSS at start: the "
          "worker's VmRSS just before the flood's first byte; peak RSS: its VmHWM (the kernel's "
          "high-water mark, the whole life of the process) when the window ends.")
    print("- flood sent: frames (a Basic.Return with its header and body counts once) and bytes "
          "the fake broker wrote to the pusher's connections, as fast as the client read; of "
          "what a client that drops the connection at the first unsolicited frame was sent, most "
          "sat unread in the sockets' kernel buffers (a few MB per connection on loopback). "
          "CPU s: the worker's user+system time during the window.")
    print("- warnings: records of level WARNING that pihace logged during the whole run "
          "(connection lost, cannot publish, blocked, unblocked ...); reconnections: the "
          "broker's count of connections, minus the first.")
    if tops:
        print("- The most common failure of push(), and how long it took:")
        for top in tops:
            print(top)
    for version, result in results:
        done = result["worker"]
        if result["kind"] == "blocked" and done is not None:
            print(f"- Blocked/Unblocked, {names[version]}: the first warnings, then the last:")
            for text in done["first"] + (["..."] if done["last"] else []) + done["last"]:
                print(f"    {text}")
    for note in notes:
        if note:
            print(f"- {note}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 s per flood")
    parser.add_argument("--seconds", type=float,
                        help=f"seconds of each flood (default {SECONDS:g}, quick 5)")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help=f"comma-separated, of: {', '.join(KINDS)} (default all)")
    parser.add_argument("--baseline", default="e293787", metavar="REV",
                        help="git revision of the 'before' pihace.py (default e293787)")
    parser.add_argument("--rss-cap", type=float, default=RSS_CAP, metavar="MB",
                        help=f"stop a worker whose RSS passes this (default {RSS_CAP})")
    parser.add_argument("--worker", nargs=2, metavar=("NAME", "JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        if args.worker[0] != "flood":
            raise SystemExit(f"unknown worker {args.worker[0]!r}")
        work_flood(json.loads(args.worker[1]))
        return 0
    seconds = args.seconds or (5.0 if args.quick else SECONDS)
    kinds = [kind.strip() for kind in args.kinds.split(",") if kind.strip()]
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown or not kinds:
        parser.error(f"unknown kind(s) {', '.join(unknown)}; known: {', '.join(KINDS)}")
    if seconds <= 0 or args.rss_cap <= 0:
        parser.error("--seconds and --rss-cap must be positive")

    common.stop_on_sigterm()
    identity = ours_identity()
    loads = [os.getloadavg()[0]]
    results = []
    with common.revision_snapshot(args.baseline) as (before, baseline, before_identity), \
            ours_snapshots() as (snapshot, _):
        same = common.same_source(snapshot, before)
        print(f"{len(kinds)} flood(s) of {seconds:g} s, each against this tree's pihace.py and "
              f"{baseline}'s ...", file=sys.stderr)
        for kind in kinds:
            for version, folder in (("this tree", snapshot), ("before", before)):
                results.append((version, trial(kind, folder, seconds, args.rss_cap)))
                print(f"  {kind}, {version}: done", file=sys.stderr)
    loads.append(os.getloadavg()[0])
    import platform

    header = [f"floods of unsolicited frames: pihace.py ({common.REPO}) vs before, a fake broker "
              "on 127.0.0.1 (threads of the parent)",
              f"pihace.py (this tree): {identity_after(identity)}",
              f"pihace.py before:      {before_identity}",
              f"machine: {machine(platform.python_implementation() + ' ' + platform.python_version())}"
              f"; load average {loads[0]:.2f} before, {loads[1]:.2f} after"]
    notes = []
    if same:
        notes.append("this tree's pihace.py is the same file as before's: their rows measure "
                     "the same code")
    notes.append(common.load_note(loads))
    print_table(results, header, seconds, baseline, notes)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the worker is killed and the broker closed by now
        sys.exit("interrupted")
