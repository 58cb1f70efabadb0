#!/usr/bin/env python3
"""Benchmark: pihace.py's AMQP publishing against pika and py-amqp, on one RabbitMQ, in one run.

    python3 bench/bench_amqp.py             # full run, 5 rounds, about four minutes
    python3 bench/bench_amqp.py --quick     # 2 rounds, fewer messages, about a minute
    python3 bench/bench_amqp.py --url amqp://guest:guest@127.0.0.1:5672/   # an existing broker

Without --url (or PIHACE_TEST_AMQP_URL) a private RabbitMQ node is started with
rabbitnode.py and stopped at the end. Every measurement runs in its own
subprocess of bench/.venv-pihace100's interpreter (created on first use, as
bench_check.py does, from requirements.txt), so CPU and memory figures are of
one client and no two clients' imports mix:

    pihace       PYTHONPATH=<snapshot of the repo's pihace.py taken at start>,
                 psutil blocked (sys.modules["psutil"] = None)
    pika         pika.BlockingConnection
    py-amqp      amqp.Connection (the `amqp` package, Celery's client)
    raw socket   the ceiling: a handshake with pihace's AMQPProtocol, then every
                 message's frames, encoded once by hand, in one sendall()
    pihace 1.0.0 from the venv (its AMQPPusher is built on pika; psutil importable)

Each queue is used by one measurement only: a separate pika subprocess then
counts its messages (the count must match what was published, so no client
can win by dropping messages) and deletes it, so every run starts from the
same broker state. The peers alternate order from round to round; each figure
is the median over rounds. This file is stdlib-only (with common.py, shared
with bench_check.py): the parent only drives subprocesses, and a subprocess
re-enters it with --worker.
"""

import argparse
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import time

import common
from common import (BENCH, REPO, VENV, VENV_PYTHON, ensure_venv, identity_after, in_order,
                    machine, ours_identity, ours_snapshots, print_rows)

BODY_SIZE = 1024
CONTENT_TYPE = "application/json"
PUBLISH_PEERS = ("pihace", "pika", "py-amqp", "raw socket")
CONFIRM_PEERS = ("pihace", "pika", "py-amqp")
OUTBOX_PEERS = ("flush()", "publish() x N")
LOOP_PEERS = ("pihace", "pihace 1.0.0", "bare python")
IMPORT_PEERS = ("pihace", "pihace 1.0.0")
OURS = {"pihace", "raw socket", "flush()", "publish() x N"}  # run with the snapshot on the path


def report_body(size=BODY_SIZE):
    """A health report as JSON, exactly `size` bytes: the same bytes for every client."""
    report = {
        "status": "Available", "rate": "4/4",
        "component": {"name": "orders-api", "version": "2.7.1"},
        "timestamp": "2026-01-01T12:00:00.000000+00:00",
        "system": {"cpu_usage": "12.5%", "memory_usage": "41.3%", "memory_available": "3.21 GB",
                   "disk_usage": "57.0%", "disk_available": "20.14 GB",
                   "python_version": "3.11.7", "os": "Linux 6.1.0"},
        "failure": None,
        "checks": {name: {"status": "ok", "latency_ms": 3.2}
                   for name in ("database", "cache", "broker", "payments")},
        "note": "",
    }
    body = json.dumps(report, separators=(",", ":")).encode()
    report["note"] = "x" * (size - len(body))
    body = json.dumps(report, separators=(",", ":")).encode()
    assert len(body) == size, len(body)
    return body


# ---------------------------------------------------------------------------
# worker: runs in a subprocess, with one client imported
# ---------------------------------------------------------------------------

def _url_parts(url):
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(url)
    return (parts.hostname or "localhost", parts.port or 5672, unquote(parts.username or "guest"),
            unquote(parts.password or "guest"), unquote(parts.path[1:]) or "/")


def _shortstr(data):
    return struct.pack(">B", len(data)) + data


def _frame(frame_type, payload):
    return struct.pack(">BHI", frame_type, 1, len(payload)) + payload + b"\xce"


def _publish_frames(queue, body):
    """Basic.Publish, content header and body frames of one message on channel 1, by hand."""
    method = struct.pack(">HHH", 60, 40, 0) + _shortstr(b"") + _shortstr(queue.encode()) + b"\x00"
    # property flags: content_type (bit 15) and delivery_mode (bit 12), values in that order
    header = (struct.pack(">HHQH", 60, 0, len(body), 0x9000)
              + _shortstr(CONTENT_TYPE.encode()) + b"\x02")
    return _frame(1, method) + _frame(2, header) + _frame(3, body)


def _raw_client(url, queue):
    """The ceiling: pihace's sans-IO AMQPProtocol for the handshake, then bytes on a socket."""
    sys.modules["psutil"] = None
    import pihace

    host, port, user, password, vhost = _url_parts(url)
    protocol = pihace.AMQPProtocol(user, password, vhost, heartbeat=0)
    sock = socket.create_connection((host, port), timeout=60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def wait_for(name):
        return common.raw_wait_for(protocol, sock, name)

    wait_for("Connection.Open-Ok")
    protocol.open_channel(1)
    wait_for("Channel.Open-Ok")
    protocol.send_method(1, "Queue.Declare", queue=queue, durable=True)
    wait_for("Queue.Declare-Ok")
    assert BODY_SIZE <= protocol.frame_max - 8, protocol.frame_max
    frames = _publish_frames(queue, report_body())

    def publish_all(count):
        sock.sendall(frames * count)

    def round_trip():
        protocol.send_method(1, "Queue.Declare", queue=queue, passive=True)
        wait_for("Queue.Declare-Ok")

    return publish_all, round_trip, sock.close, pihace.__file__


def _client(peer, url, queue, confirm):
    """(publish(body), round_trip(), close(), module file) of one client on a new connection.

    Each one connects and declares the durable queue here, before any timing.
    round_trip() is a passive Queue.Declare on the publishing channel: its reply
    comes after the broker's channel has handled every publish sent before it.
    """
    if peer == "pihace":
        sys.modules["psutil"] = None
        import pihace

        pusher = pihace.AMQPPusher(None, url, queue, confirm=confirm)

        def publish(body):
            result = pusher.publish(body)
            if result is not True:
                raise RuntimeError(f"pihace: {result}")

        def round_trip():
            # pihace has no public call that waits for the broker without publishing; this is
            # its own connection's synchronous call (private: follow pihace if it changes).
            pusher._connection.call(pusher._channel, "Queue.Declare", pusher.clock() + 60,
                                    queue=queue, passive=True)

        publish(b"{}")  # connects, opens the channel, declares the queue
        return publish, round_trip, pusher.close, pihace.__file__
    if peer == "pika":
        import pika

        connection = pika.BlockingConnection(pika.URLParameters(url))
        channel = connection.channel()
        channel.queue_declare(queue, durable=True)
        if confirm:
            channel.confirm_delivery()
        properties = pika.BasicProperties(content_type=CONTENT_TYPE, delivery_mode=2)

        def publish(body):  # raises on a nack or a return when confirming
            channel.basic_publish(exchange="", routing_key=queue, body=body,
                                  properties=properties, mandatory=confirm)

        def round_trip():
            channel.queue_declare(queue, passive=True)

        publish(b"{}")
        return publish, round_trip, connection.close, pika.__file__
    if peer == "py-amqp":
        import amqp

        host, port, user, password, vhost = _url_parts(url)
        connection = amqp.Connection(f"{host}:{port}", userid=user, password=password,
                                     virtual_host=vhost)
        connection.connect()
        channel = connection.channel()
        channel.queue_declare(queue, durable=True, auto_delete=False)

        def publish(body):
            message = amqp.Message(body, content_type=CONTENT_TYPE, delivery_mode=2)
            if confirm:  # confirm_select() on first use; raises on a nack
                channel.basic_publish_confirm(message, exchange="", routing_key=queue,
                                              mandatory=True)
            else:
                channel.basic_publish(message, exchange="", routing_key=queue)

        def round_trip():
            channel.queue_declare(queue, passive=True)

        publish(b"{}")
        return publish, round_trip, connection.close, amqp.__file__
    raise SystemExit(f"unknown peer {peer!r}")


def work_publish(peer, url, queue, count):
    """Fire-and-forget: `count` publishes, then one round trip; wall and CPU seconds."""
    body = report_body()
    if peer == "raw socket":
        publish_all, round_trip, close, module = _raw_client(url, queue)
        publish_all(1)
        round_trip()  # warm: the queue exists and the connection has carried a message
        wall, cpu = time.perf_counter(), time.process_time()
        publish_all(count)
        round_trip()
    else:
        publish, round_trip, close, module = _client(peer, url, queue, confirm=False)
        round_trip()
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(count):
            publish(body)
        round_trip()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    close()
    return {"wall": wall, "cpu": cpu, "file": module}


def work_confirmed(peer, url, queue, count):
    """`count` publishes, each waiting for its confirm: microseconds of each."""
    body = report_body()
    publish, round_trip, close, module = _client(peer, url, queue, confirm=True)
    for _ in range(20):
        publish(body)  # warm
    times = []
    for _ in range(count):
        start = time.perf_counter()
        publish(body)
        times.append((time.perf_counter() - start) * 1e6)
    close()
    return {"us": times, "file": module}


def work_outbox(mode, url, queue, count):
    """pihace only: `count` reports from the outbox with flush(), or `count` publish() calls."""
    sys.modules["psutil"] = None
    import pihace

    body = report_body()
    pusher = pihace.AMQPPusher(None, url, queue)  # confirm=True
    assert pusher.publish(body) is True  # connects, declares: not timed
    if mode == "flush()":
        # Reports as push() queues them while the broker is away: encoded (message id,
        # timestamp) when they were taken, so only their delivery is timed.
        for _ in range(count):
            pusher.outbox.add(pusher._message(body))
        start = time.perf_counter()
        result = pusher.flush()
        wall = time.perf_counter() - start
        assert result is True and not pusher.outbox, (result, len(pusher.outbox))
    else:
        start = time.perf_counter()
        for _ in range(count):
            result = pusher.publish(body)
            if result is not True:
                raise RuntimeError(f"pihace: {result}")
        wall = time.perf_counter() - start
    pusher.close()
    return {"wall": wall, "file": pihace.__file__}


def work_cleanup(url, queue):
    """Count a queue's messages with pika (an independent reader), then delete it."""
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    count = channel.queue_declare(queue, passive=True).method.message_count
    channel.queue_delete(queue)
    connection.close()
    return {"count": count}


def work_info(url):
    return common.versions_info(url, ("pika", "amqp"))


def worker(name, options):
    if name == "publish":
        result = work_publish(options["peer"], options["url"], options["queue"], options["n"])
    elif name == "confirmed":
        result = work_confirmed(options["peer"], options["url"], options["queue"], options["n"])
    elif name == "outbox":
        result = work_outbox(options["peer"], options["url"], options["queue"], options["n"])
    elif name == "cleanup":
        result = work_cleanup(options["url"], options["queue"])
    elif name == "info":
        result = work_info(options["url"])
    else:
        raise SystemExit(f"unknown worker {name!r}")
    print(json.dumps(result))


# The memory figure runs `python -c` with these, so nothing of this file is imported there.
READ_RSS = ("import sys\n"
            "status = dict(line.split(':', 1) for line in open('/proc/self/status'))\n"
            "print(int(status['VmRSS'].split()[0]), int(status['VmHWM'].split()[0]),\n"
            "      getattr(sys.modules.get('pihace'), '__file__', '-'), flush=True)\n")
LOOP_CODE = {
    "pihace": (
        "import sys, threading, time\n"
        "sys.modules['psutil'] = None\n"
        "from pihace import AMQPPusher, HealthCheck\n"
        "hc = HealthCheck(with_system=True)\n"
        "hc.register('trivial', lambda: True)\n"
        "pusher = AMQPPusher(hc, sys.argv[1], sys.argv[2])\n"
        "thread = threading.Thread(target=pusher.push_forever_in_loop, kwargs={'interval': 0.2})\n"
        "thread.start()\n"
        "time.sleep(float(sys.argv[3]))\n"
        + READ_RSS +
        "pusher.stop()\n"
        "thread.join()\n"),
    "pihace 1.0.0": (  # its loop never ends: a daemon thread, and os._exit
        "import os, sys, threading, time\n"
        "from pihace.healthcheck import HealthCheck\n"
        "from pihace.pusher.messaging import AMQPPusher\n"
        "hc = HealthCheck(with_system=True)\n"
        "hc.register('trivial', lambda: True)\n"
        "pusher = AMQPPusher(hc, sys.argv[1], sys.argv[2])\n"
        "thread = threading.Thread(target=pusher.push_forever_in_loop, kwargs={'interval': 0.2},"
        " daemon=True)\n"
        "thread.start()\n"
        "time.sleep(float(sys.argv[3]))\n"
        + READ_RSS +
        "os._exit(0)\n"),
    "bare python": READ_RSS,
}
IMPORT_CODE = {
    "bare": "pass",
    "pihace": "import sys; sys.modules['psutil'] = None; from pihace import AMQPPusher",
    "pihace 1.0.0": "from pihace.pusher.messaging import AMQPPusher",
}


# ---------------------------------------------------------------------------
# parent: set-up, subprocesses, table
# ---------------------------------------------------------------------------

def env_for(peer, ours_dir, bytecode=False):
    """The environment of a subprocess: the snapshot of pihace.py on the path for ours only."""
    return common.env_for(ours_dir if peer in OURS else None, bytecode)


class Runner:
    """Runs worker subprocesses against one broker; each queue is used once."""

    def __init__(self, url, ours_dir, cached_dir):
        self.url, self.ours_dir = url, ours_dir
        self.cached_dir = cached_dir  # a copy with its __pycache__, as users run it
        self.queues = 0
        subprocess.run([VENV_PYTHON, "-c", "import pihace"], cwd=BENCH, check=True,
                       env=env_for("pihace", cached_dir, bytecode=True))

    def new_queue(self, what):
        self.queues += 1
        return f"bench.{what}.{os.getpid()}.{self.queues}"

    def worker(self, name, peer="", **options):
        result = common.run_worker(__file__, name, dict(options, peer=peer, url=self.url),
                                   env_for(peer, self.ours_dir))
        if peer in OURS:  # guard against measuring the wrong pihace
            assert result["file"].startswith(self.ours_dir + os.sep), (peer, result["file"])
        return result

    def cleanup(self, queue, expected=None):
        count = self.worker("cleanup", queue=queue)["count"]
        if expected is not None and count != expected:
            raise SystemExit(f"queue {queue}: {count} messages, {expected} published")
        return count

    def measured(self, name, peer, count, expected):
        """One measurement on a queue of its own; the queue is checked and deleted after."""
        queue = self.new_queue(name)
        result = self.worker(name, peer, queue=queue, n=count)
        self.cleanup(queue, expected)
        return result

    def loop_rss(self, peer, seconds):
        """(VmRSS MB, VmHWM MB, reports pushed) of `python -c` running the loop for `seconds`."""
        queue = self.new_queue("loop")
        code = LOOP_CODE[peer]
        # bytecode cached, as after pip install or a first import of a copied file
        env = env_for("pihace" if peer == "pihace" else "", self.cached_dir, bytecode=True)
        done = subprocess.run([VENV_PYTHON, "-c", code, self.url, queue, str(seconds)],
                              cwd=BENCH, env=env, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise SystemExit(f"{peer} loop failed:\n{done.stderr}")
        rss, hwm, module = done.stdout.strip().splitlines()[-1].split(" ", 2)
        expected = {"pihace": self.cached_dir + os.sep, "pihace 1.0.0": VENV + os.sep}.get(peer, "-")
        assert module.startswith(expected), (peer, module)  # the right pihace, or none
        rss, hwm = int(rss) / 1024, int(hwm) / 1024
        pushed = None if peer == "bare python" else self.cleanup(queue)
        if pushed == 0:
            raise SystemExit(f"{peer}: no report reached the queue in {seconds} s")
        return rss, hwm, pushed


def bench_rounds(runner, rounds, sizes):
    """{(figure, peer): [one value per round]}."""
    results = {}

    def add(figure, peer, value):
        results.setdefault((figure, peer), []).append(value)

    n_publish, n_confirm, n_outbox, loop_seconds = sizes
    for round_number in range(rounds):
        for peer in in_order(PUBLISH_PEERS, round_number):
            # +1: the warm-up message of each client
            result = runner.measured("publish", peer, n_publish, n_publish + 1)
            add("throughput", peer, n_publish / result["wall"])
            add("cpu", peer, result["cpu"] / n_publish * 1e6)
        for peer in in_order(CONFIRM_PEERS, round_number):
            result = runner.measured("confirmed", peer, n_confirm, n_confirm + 21)
            add("confirmed", peer, statistics.median(result["us"]))
        for peer in in_order(OUTBOX_PEERS, round_number):
            result = runner.measured("outbox", peer, n_outbox, n_outbox + 1)
            add("outbox", peer, result["wall"] * 1000)
        for peer in in_order(LOOP_PEERS, round_number):
            rss, hwm, pushed = runner.loop_rss(peer, loop_seconds)
            add("rss", peer, rss)
            add("hwm", peer, hwm)
            if pushed is not None:
                add("pushed", peer, pushed)
        print(f"  round {round_number + 1}/{rounds} done", file=sys.stderr)
    return results


def bench_import(runs, bytecode, ours_dir):
    """Wall ms of each import minus the median of `python -c pass`, alternating order."""
    codes = {name: (code, ours_dir if name == "pihace" else None)
             for name, code in IMPORT_CODE.items()}
    return common.bench_import(codes, runs, bytecode, IMPORT_PEERS)


def fmt(value):
    return common.fmt(value, decimals=2, thousands=True)


def print_table(results, sizes, rounds, import_runs, bare_ms, header_lines, notes, loads):
    n_publish, n_confirm, n_outbox, loop_seconds = sizes
    median = {key: statistics.median(values) for key, values in results.items()}

    def ours_over(figure, peer):
        return median[(figure, "pihace")] / median[(figure, peer)]

    def verdict(met, text):
        return f"{text}: {'met' if met else 'MISSED'}"

    speedup = median[("outbox", "publish() x N")] / median[("outbox", "flush()")]
    targets = {
        # issue 29 part 3 (earlier: >= 1.6x pika and >= 1.3x py-amqp; CPU <= 0.4x pika)
        "throughput": verdict(ours_over("throughput", "raw socket") >= 0.9
                              and ours_over("throughput", "pika") >= 1.3,
                              ">= 0.9x the ceiling and >= 1.3x pika"),
        "cpu": verdict(ours_over("cpu", "pika") <= 0.3, "<= 0.3x pika"),
        "confirmed": verdict(ours_over("confirmed", "pika") <= 1.0, "<= 1x pika"),
        "outbox": verdict(speedup >= 5, f">= 5x faster than one at a time ({speedup:.1f}x)"),
        "rss": verdict(median[("rss", "pihace")] <= 16, "<= 16 MB"),
    }
    figures = [
        ("throughput", f"1 fire-and-forget, {n_publish:,} x {BODY_SIZE} B persistent, msg/s",
         PUBLISH_PEERS),
        ("cpu", "2 client CPU time in that run, us/msg", PUBLISH_PEERS),
        ("confirmed", f"3 confirmed one at a time ({n_confirm}), median us/msg", CONFIRM_PEERS),
        ("outbox", f"4 pihace: {n_outbox:,} reports confirmed, ms", OUTBOX_PEERS),
        ("rss", f"5 RSS after {loop_seconds:g} s of push_forever_in_loop(0.2), bytecode cached, MB", LOOP_PEERS),
        ("hwm", "  peak RSS (VmHWM) of the same, MB", LOOP_PEERS),
        ("import", "  import, bytecode cached, ms over bare python", IMPORT_PEERS),
        ("import-env", "  import, no bytecode cache (env), ms over bare", IMPORT_PEERS),
    ]
    names = {"raw socket": "raw socket (ceiling)", "flush()": "flush() of the outbox",
             "publish() x N": f"{n_outbox:,} x publish()", "pihace": "pihace.py",
             "pihace 1.0.0": "pihace 1.0.0 (pika, psutil)", "bare python": "bare python -c"}
    lines = [("figure", "client", "median", "min..max", "pihace/this", "target (pihace.py)")]
    for figure, label, peers in figures:
        for index, peer in enumerate(peers):
            values = results[(figure, peer)]
            ratio = ("-" if peer == "pihace" or figure == "outbox"
                     else f"{ours_over(figure, peer):.2f}")
            target = targets.get(figure, "-") if index == 0 else ""
            lines.append((label if index == 0 else "", names.get(peer, peer),
                          fmt(median[(figure, peer)]), f"{fmt(min(values))}..{fmt(max(values))}",
                          ratio, target))
    print()
    for line in header_lines:
        print(line)
    print()
    print_rows(lines, right=(2, 3, 4))
    print()
    ceiling = median[("throughput", "raw socket")]
    print(f"Medians of {rounds} round{'s' if rounds != 1 else ''} (imports: {import_runs} runs "
          "each); min..max are the "
          "per-round values. pihace/this is the ratio of medians.")
    print(f"- Ceiling: the raw socket, which spends almost no CPU, gets {fmt(ceiling)} msg/s; "
          f"pihace.py reaches {median[('throughput', 'pihace')] / ceiling:.0%} of it, pika "
          f"{median[('throughput', 'pika')] / ceiling:.0%}, py-amqp "
          f"{median[('throughput', 'py-amqp')] / ceiling:.0%}. A client near the ceiling is "
          "limited by the broker (credit flow stops reading its socket), not by itself; "
          "figure 2 shows the client's own cost either way.")
    print("- CPU time as a share of wall time in figure 1: " + ", ".join(
        f"{peer} {median[('cpu', peer)] * median[('throughput', peer)] / 1e6:.0%}"
        for peer in PUBLISH_PEERS[:3]) + ". The rest is waiting: for the broker (same CPUs), "
          "for its credit flow, or for CPUs other processes hold.")
    print("- Every run ends with one passive Queue.Declare round trip on the publishing channel "
          "(timed): its reply comes after the broker's channel handled every message. A pika "
          "subprocess then counts each queue: all messages arrived in every run.")
    print("- pihace.py's messages also carry message_id, timestamp, type and content_encoding, "
          "which it makes per message; the others send content_type and delivery_mode only. "
          "Figure 3 publishes with mandatory=True everywhere (pihace.py does when confirming).")
    print("- Figure 4 times only flush() for reports already in the outbox (made with "
          "_message()); the publish() loop also makes each message (a few us of its ms).")
    print(f"- Reports pushed in {loop_seconds:g} s (median): "
          + ", ".join(f"{peer} {fmt(median[('pushed', peer)])}" for peer in LOOP_PEERS[:2])
          + ". pihace 1.0.0's system figures use psutil.cpu_percent(interval=1): one push a "
          "second at most.")
    print(f"- bare `python -c pass`: {bare_ms[0]:.1f} ms (env), {bare_ms[1]:.1f} ms (cached). "
          "'env' is PYTHONDONTWRITEBYTECODE=1 as this environment sets it: pihace.py is "
          "compiled every run while pika and pihace 1.0.0 use the .pyc pip wrote.")
    for note in notes + [common.load_note(loads)]:
        if note:
            print(f"- {note}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds, fewer messages")
    parser.add_argument("--rounds", type=int, help="rounds (default 5, quick 2)")
    parser.add_argument("--url", help="an existing broker (default: $PIHACE_TEST_AMQP_URL, else "
                                      "a private RabbitMQ node)")
    parser.add_argument("--worker", nargs=2, metavar=("NAME", "JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker[0], json.loads(args.worker[1]))
        return 0

    rounds = args.rounds or (2 if args.quick else 5)
    sizes = (5000, 200, 300, 2.0) if args.quick else (20000, 500, 1000, 3.0)
    import_runs = 5 if args.quick else 10
    ensure_venv("pihace.pusher.messaging, psutil, pika, amqp")
    identity = ours_identity()
    loads = [os.getloadavg()[0]]
    with common.broker(args.url) as (url, notes), ours_snapshots() as (snapshot, cached):
        runner = Runner(url, snapshot, cached)
        info = runner.worker("info")
        print(f"rounds of figures 1-5 against {info['broker']} ...", file=sys.stderr)
        results = bench_rounds(runner, rounds, sizes)
        print("imports ...", file=sys.stderr)
        results_env, bare_env = bench_import(import_runs, False, snapshot)
        results_cached, bare_cached = bench_import(import_runs, True, cached)
    for peer in IMPORT_PEERS:
        results[("import", peer)] = results_cached[peer]
        results[("import-env", peer)] = results_env[peer]
    loads.append(os.getloadavg()[0])
    versions = f"{info['python']}, pika {info['pika']}, py-amqp {info['amqp']}, {info['broker']}"
    header = [f"pihace.py ({REPO}) vs pika and py-amqp, one broker, peers alternating",
              f"pihace.py: {identity_after(identity)}",
              f"machine: {machine(versions)}; load average {loads[0]:.2f} before, "
              f"{loads[1]:.2f} after"]
    print_table(results, sizes, rounds, import_runs, (bare_env, bare_cached), header, notes,
                loads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
