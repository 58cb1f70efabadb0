#!/usr/bin/env python3
"""Benchmark: consuming health reports (pihace.py's Watcher side) against pika and py-amqp.

    python3 bench/bench_watch.py             # 5 rounds, about three minutes
    python3 bench/bench_watch.py --quick     # 2 rounds, fewer messages
    python3 bench/bench_watch.py --url amqp://guest:guest@127.0.0.1:5672/   # an existing broker

Without --url (or PIHACE_TEST_AMQP_URL) a private RabbitMQ node is started with
rabbitnode.py and stopped at the end. Every measurement runs in its own subprocess of
bench/.venv-pihace100's interpreter (see bench_amqp.py), peers alternating from round to
round; each figure is the median over rounds.

1. Consuming: a durable queue is filled with N persistent 1 KB reports (confirmed, so they
   are all on the broker first); each client then consumes them with prefetch 100, parses
   each body as JSON (all but the ceiling) and acknowledges. Time and CPU run from the start
   of consuming to the last acknowledgement sent; a pika subprocess then checks the queue is
   empty (nothing was skipped). The peers acknowledge with `multiple` every 50 messages (half
   the prefetch) and at the end, the cheapest way each offers; pika and py-amqp also run as
   their documentation shows them, one Ack per message ("ack each", as in the issue's
   reference run):
       pihace           BlockingConnection.consume() / deliveries() / ack(multiple=True) once
                        per batch that one read brought
       pihace Watcher   Watcher.run(idle=...): the same, and each report applied to its device
       pika             BlockingConnection, basic_consume callback, start_consuming()
       py-amqp          amqp.Connection, basic_consume callback, drain_events()
       raw socket       the ceiling, as in bench_amqp.py: pihace's sans-IO AMQPProtocol for
       (ceiling)        the handshake, Basic.Qos and Basic.Consume, then recv() on the socket,
                        frames cut by their header, Basic.Deliver counted (no body read, no
                        JSON), a pre-encoded multiple Ack every 50: what the broker delivers
                        to a client that costs almost nothing
2. 50,000 devices: a Watcher (no broker) is fed a synthetic stream of reports, two per device
   (so its duplicate window holds 100,000 ids); figures: resident memory after that, and the
   time of one apply() (median and 99th percentile over the second pass).
"""

import argparse
import json
import os
import socket
import statistics
import struct
import sys
import time

import common
from common import (REPO, ensure_venv, identity_after, in_order, machine, ours_identity,
                    ours_snapshots, print_rows)

BODY_SIZE = 1024
CEILING = "raw socket (ceiling)"
CONSUME_PEERS = ("pihace", "pihace Watcher", "pika", "pika, ack each", "py-amqp",
                 "py-amqp, ack each", CEILING)
OURS = {"pihace", "pihace Watcher", CEILING, "devices", "fill"}  # run with the snapshot
PREFETCH = 100
ACK_EVERY = 50


def report_body(index, size=BODY_SIZE):
    """A health report as JSON, `size` bytes, from one of 100 devices."""
    report = {"status": "Available", "timestamp": "2026-01-01T12:00:00.000000Z",
              "failure": None, "rate": "4/4", "duration": 0.002, "system": None,
              "component": {"name": f"device-{index % 100}", "version": "2.7.1"},
              "checks": {name: {"status": "pass", "duration_ms": 3.2, "attempts": 1,
                                "message": None} for name in ("db", "cache", "broker")},
              "host": f"host-{index % 100}", "interval": 60.0, "note": ""}
    body = json.dumps(report, separators=(",", ":")).encode()
    report["note"] = "x" * (size - len(body))
    body = json.dumps(report, separators=(",", ":")).encode()
    assert len(body) == size, len(body)
    return body


# ---------------------------------------------------------------------------
# worker: runs in a subprocess, with one client imported
# ---------------------------------------------------------------------------

def _pihace():
    sys.modules["psutil"] = None
    import pihace

    return pihace


def work_fill(url, queue, count):
    """Fill a durable queue with `count` persistent reports, each confirmed."""
    pihace = _pihace()
    connection = pihace.open_connection([pihace.AMQPParameters(url)], time.monotonic() + 30)
    deadline = time.monotonic() + 120
    connection.open_channel(1, deadline, confirm=True)
    connection.call(1, "Queue.Declare", deadline, queue=queue, durable=True)
    properties = pihace.encode_properties({"content_type": "application/json",
                                           "delivery_mode": 2})
    for start in range(0, count, 1000):
        messages = [pihace._Message(report_body(index), properties, str(index), "", queue)
                    for index in range(start, min(count, start + 1000))]
        outcomes = connection.publish(1, messages, deadline)
        assert all(outcome == (True, None) for outcome in outcomes.values())
    connection.close(time.monotonic() + 5)
    return {"file": pihace.__file__}


def consume_pihace(url, queue, count):
    pihace = _pihace()
    connection = pihace.open_connection([pihace.AMQPParameters(url)], time.monotonic() + 30)
    connection.open_channel(1, time.monotonic() + 10, confirm=False)
    loads = json.loads
    wall, cpu = time.perf_counter(), time.process_time()
    connection.consume(1, queue, time.monotonic() + 10, prefetch=PREFETCH)
    received = unacked = last = 0  # last: the tag of the last delivery of the batch before
    while received < count:
        batch = connection.deliveries(0.02 if unacked else 10.0, time.monotonic() + 10)
        if not batch and not unacked:
            raise SystemExit(f"pihace: {received} of {count} came")
        for delivery in batch:
            loads(delivery.body)
            received += 1
            unacked += 1
            if unacked == ACK_EVERY or received == count:
                connection.ack(1, delivery.delivery_tag, time.monotonic() + 10, multiple=True)
                unacked = 0
        if unacked and not batch:  # a pause: what came before it
            connection.ack(1, last, time.monotonic() + 10, multiple=True)
            unacked = 0
        if batch:
            last = batch[-1].delivery_tag
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    connection.close(time.monotonic() + 5)
    return {"wall": wall, "cpu": cpu, "file": pihace.__file__}


def consume_watcher(url, queue, count):
    pihace = _pihace()
    watcher = pihace.Watcher(url, queue, prefetch=PREFETCH, declare=False)
    wall, cpu = time.perf_counter(), time.process_time()
    watcher.run(idle=0.3)  # ends 0.3 s after the last report: taken off the wall time
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall - 0.3
    applied = watcher.counts["applied"] + watcher.counts["stale"]
    if applied != count or len(watcher.devices) != 100:
        raise SystemExit(f"Watcher: {dict(watcher.counts)}, {len(watcher.devices)} devices")
    return {"wall": wall, "cpu": cpu, "file": pihace.__file__}


def consume_pika(url, queue, count, ack_every=ACK_EVERY):
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=PREFETCH)
    loads, received = json.loads, [0]

    def on_message(channel, method, properties, body):
        loads(body)
        received[0] += 1
        if received[0] % ack_every == 0 or received[0] == count:
            channel.basic_ack(method.delivery_tag, multiple=ack_every > 1)
        if received[0] == count:
            channel.stop_consuming()

    wall, cpu = time.perf_counter(), time.process_time()
    channel.basic_consume(queue, on_message)
    channel.start_consuming()
    connection.process_data_events(0)  # the last ack goes out
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    connection.close()
    return {"wall": wall, "cpu": cpu, "file": pika.__file__}


def consume_amqp(url, queue, count, ack_every=ACK_EVERY):
    import amqp
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(url)
    connection = amqp.Connection(f"{parts.hostname}:{parts.port}", userid=unquote(parts.username),
                                 password=unquote(parts.password), virtual_host="/")
    connection.connect()
    channel = connection.channel()
    channel.basic_qos(0, PREFETCH, False)
    loads, received = json.loads, [0]

    def on_message(message):
        loads(message.body)
        received[0] += 1
        if received[0] % ack_every == 0 or received[0] == count:
            channel.basic_ack(message.delivery_tag, multiple=ack_every > 1)

    wall, cpu = time.perf_counter(), time.process_time()
    channel.basic_consume(queue, callback=on_message)
    while received[0] < count:
        connection.drain_events(timeout=10)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    connection.close()
    return {"wall": wall, "cpu": cpu, "file": amqp.__file__}


def consume_raw(url, queue, count):
    """The ceiling: pihace's sans-IO AMQPProtocol for the handshake, Basic.Qos and
    Basic.Consume, then the socket read directly. Frames are cut by their 7-byte header; each
    Basic.Deliver is counted and its delivery tag read, nothing else (no body, no JSON); a
    Basic.Ack with `multiple`, encoded but for its tag beforehand, goes every 50 deliveries."""
    from urllib.parse import unquote, urlsplit

    pihace = _pihace()
    parts = urlsplit(url)
    protocol = pihace.AMQPProtocol(unquote(parts.username or "guest"),
                                   unquote(parts.password or "guest"),
                                   unquote(parts.path[1:]) or "/", heartbeat=0)
    sock = socket.create_connection((parts.hostname or "localhost", parts.port or 5672),
                                    timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    recv, sendall = sock.recv, sock.sendall
    unpack_header = struct.Struct(">BHI").unpack_from  # frame type, channel, payload size
    unpack_tag = struct.Struct(">Q").unpack_from

    def exactly(size):
        data = b""
        while len(data) < size:
            chunk = recv(size - len(data))
            if not chunk:
                raise SystemExit(f"raw socket: the connection ended ({len(data)} of {size} bytes)")
            data += chunk
        return data

    def one_frame():  # one frame and no more: what follows Basic.Consume-Ok stays in the socket
        header = exactly(7)
        return header + exactly(unpack_header(header)[2] + 1)

    def wait_for(name, read=None):
        return common.raw_wait_for(protocol, sock, name, read)

    wait_for("Connection.Open-Ok")
    protocol.open_channel(1)
    wait_for("Channel.Open-Ok")
    protocol.send_method(1, "Basic.Qos", prefetch_count=PREFETCH)
    wait_for("Basic.Qos-Ok")
    # Basic.Ack on channel 1 (payload 13 bytes: class 60, method 80, tag, bits), multiple set
    ack_head, ack_tail, pack_tag = struct.pack(">BHIHH", 1, 1, 13, 60, 80), b"\x01\xce", \
        struct.Struct(">Q").pack
    deliver = struct.pack(">HH", 60, 60)
    data, start, received, unacked, tag = b"", 0, 0, 0, 0
    wall, cpu = time.perf_counter(), time.process_time()
    protocol.consume(1, queue)
    wait_for("Basic.Consume-Ok", read=one_frame)
    try:
        while received < count:
            chunk = recv(1 << 16)
            if not chunk:
                raise SystemExit(f"raw socket: the connection ended after {received} of {count}")
            data = data[start:] + chunk if start < len(data) else chunk
            start, end = 0, len(data)
            while end - start >= 7:
                frame_type, channel, size = unpack_header(data, start)
                stop = start + size + 8
                if stop > end:
                    break
                if data[stop - 1] != 0xCE:
                    raise SystemExit(f"raw socket: no frame end after a frame of type {frame_type}")
                if frame_type == 1:  # a method: Basic.Deliver is the only one expected
                    if data[start + 7:start + 11] != deliver:
                        raise SystemExit(f"raw socket: method {data[start + 7:start + 11].hex()} "
                                         f"on channel {channel} after {received} deliveries")
                    # class, method, consumer tag (shortstr), then the delivery tag
                    tag = unpack_tag(data, start + 12 + data[start + 11])[0]
                    received += 1
                    unacked += 1
                    if unacked == ACK_EVERY or received == count:
                        sendall(ack_head + pack_tag(tag) + ack_tail)
                        unacked = 0
                start = stop
    except socket.timeout:
        raise SystemExit(f"raw socket: {received} of {count} came") from None
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if tag != count:  # tags count from 1 on the channel: none was redelivered or skipped
        raise SystemExit(f"raw socket: last delivery tag {tag}, {count} deliveries")
    # Not timed: Connection.Close, then its Close-Ok (after the broker took every ack). What
    # follows the last Deliver (its header and body frames) is cut and passed over.
    protocol.close()
    sendall(protocol.data_to_send())
    data = data[start:]
    while True:
        while len(data) >= 7 and len(data) >= unpack_header(data)[2] + 8:
            frame_type, channel, size = unpack_header(data)
            if frame_type == 1 and data[7:11] == struct.pack(">HH", 10, 51):
                sock.close()
                return {"wall": wall, "cpu": cpu, "file": pihace.__file__}
            if frame_type == 1:
                raise SystemExit(f"raw socket: method {data[7:11].hex()} on channel {channel} "
                                 "while closing")
            data = data[size + 8:]
        chunk = recv(1 << 16)
        if not chunk:
            raise SystemExit("raw socket: the connection ended before Connection.Close-Ok")
        data += chunk


CONSUMERS = {"pihace": consume_pihace, "pihace Watcher": consume_watcher, "pika": consume_pika,
             "pika, ack each": lambda *args: consume_pika(*args, ack_every=1),
             "py-amqp": consume_amqp,
             "py-amqp, ack each": lambda *args: consume_amqp(*args, ack_every=1),
             CEILING: consume_raw}


def work_devices(count):
    """Memory and apply() time of a Watcher tracking `count` devices."""
    import gc

    pihace = _pihace()

    def rss_mb():
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024

    before = rss_mb()
    watcher = pihace.Watcher("amqp://localhost/")
    template = report_body(0, 600).replace(b"device-0", b"device-%d").replace(b"host-0", b"h%d") \
        .replace(b"%", b"%%").replace(b"device-%%d", b"device-%d").replace(b"h%%d", b"h%d")
    clock, apply = time.perf_counter_ns, watcher.apply
    times = []
    for round_number in range(2):
        for index in range(count):
            body = template % (index, index)
            properties = {"message_id": f"{round_number}-{index}", "app_id": "bench"}
            start = clock()
            apply(body, properties)
            if round_number:
                times.append(clock() - start)
    gc.collect()
    after = rss_mb()
    assert len(watcher.devices) == count and watcher.counts["applied"] == 2 * count
    times.sort()
    return {"rss": after, "growth": after - before, "median_us": times[len(times) // 2] / 1000,
            "p99_us": times[len(times) * 99 // 100] / 1000, "file": pihace.__file__}


def work_cleanup(url, queue):
    """The queue's message count, then delete it (pika, independent of the peers)."""
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    count = channel.queue_declare(queue, passive=True).method.message_count
    channel.queue_delete(queue)
    connection.close()
    return {"count": count}


def worker(name, options):
    url, queue = options.get("url"), options.get("queue")
    if name == "fill":
        result = work_fill(url, queue, options["n"])
    elif name == "consume":
        result = CONSUMERS[options["peer"]](url, queue, options["n"])
    elif name == "devices":
        result = work_devices(options["n"])
    elif name == "cleanup":
        result = work_cleanup(url, queue)
    elif name == "info":
        result = common.versions_info(url, ("pika", "amqp"))
    else:
        raise SystemExit(f"unknown worker {name!r}")
    print(json.dumps(result))


# ---------------------------------------------------------------------------
# parent: drives the workers and prints the table
# ---------------------------------------------------------------------------

class Runner:
    def __init__(self, url, ours_dir):
        self.url, self.ours_dir, self.queues = url, ours_dir, 0

    def worker(self, name, peer="", **options):
        ours = peer in OURS or name in OURS
        result = common.run_worker(__file__, name, dict(options, peer=peer, url=self.url),
                                   common.env_for(self.ours_dir if ours else None))
        if ours and "file" in result:  # guard against measuring the wrong pihace
            assert result["file"].startswith(self.ours_dir + os.sep), (peer, result["file"])
        return result

    def consume(self, peer, count):
        self.queues += 1
        queue = f"bench.watch.{os.getpid()}.{self.queues}"
        self.worker("fill", queue=queue, n=count)
        result = self.worker("consume", peer, queue=queue, n=count)
        left = self.worker("cleanup", queue=queue)["count"]
        if left:
            raise SystemExit(f"{peer}: {left} of {count} messages left in the queue")
        return result


def bench_rounds(runner, rounds, count, devices):
    results = {}

    def add(figure, peer, value):
        results.setdefault((figure, peer), []).append(value)

    for round_number in range(rounds):
        for peer in in_order(CONSUME_PEERS, round_number):
            result = runner.consume(peer, count)
            add("throughput", peer, count / result["wall"])
            add("cpu", peer, result["cpu"] / count * 1e6)
        result = runner.worker("devices", n=devices)
        for figure in ("rss", "growth", "median_us", "p99_us"):
            add(figure, "Watcher", result[figure])
        print(f"  round {round_number + 1}/{rounds} done", file=sys.stderr)
    return results


def print_table(results, rounds, count, devices, header):
    median = {key: statistics.median(values) for key, values in results.items()}
    fmt = lambda value: common.fmt(value, decimals=2, thousands=True)  # noqa: E731

    def ratio(figure, peer):
        return median[(figure, "pihace")] / median[(figure, peer)]

    def verdict(met, text):
        return f"{text}: {'met' if met else 'MISSED'}"

    targets = {
        "throughput": verdict(ratio("throughput", "pika, ack each") >= 1.3
                              and ratio("throughput", "py-amqp, ack each") >= 1.5,
                              ">= 1.3x pika and >= 1.5x py-amqp (ack each)"),
        "cpu": verdict(ratio("cpu", "pika, ack each") <= 0.4, "<= 0.4x pika (ack each)"),
        "rss": verdict(median[("rss", "Watcher")] <= 100, "<= 100 MB"),
        "median_us": verdict(median[("median_us", "Watcher")] <= 20, "<= 20 us"),
    }
    figures = [
        ("throughput", f"1 consuming {count:,} x {BODY_SIZE} B persistent, prefetch "
         f"{PREFETCH}, JSON parsed, acked: msg/s", CONSUME_PEERS),
        ("cpu", "2 client CPU time in that run, us/msg", CONSUME_PEERS),
        ("rss", f"3 Watcher tracking {devices:,} devices: RSS of the process, MB", ("Watcher",)),
        ("growth", "  of which the watcher's own (RSS growth), MB", ("Watcher",)),
        ("median_us", "4 time of one apply(), median us", ("Watcher",)),
        ("p99_us", "  99th percentile, us", ("Watcher",)),
    ]
    names = {"pihace": "pihace.py (transport)", "pihace Watcher": "pihace.py Watcher.run()",
             "Watcher": "pihace.py Watcher"}
    lines = [("figure", "client", "median", "min..max", "pihace/this", "target (pihace.py)")]
    for figure, label, peers in figures:
        for index, peer in enumerate(peers):
            values = results[(figure, peer)]
            shown = "-" if peer in ("pihace", "Watcher") else f"{ratio(figure, peer):.2f}"
            lines.append((label if index == 0 else "", names.get(peer, peer),
                          fmt(median[(figure, peer)]), f"{fmt(min(values))}..{fmt(max(values))}",
                          shown, targets.get(figure, "-") if index == 0 else ""))
    print()
    for line in header:
        print(line)
    print()
    print_rows(lines, right=(2, 3, 4))
    print()
    print(f"Medians of {rounds} round{'s' if rounds != 1 else ''}; min..max are the per-round "
          "values; pihace/this is the ratio of medians (transport row over each peer).")
    print(f"- Every peer but the ceiling parses each body with json.loads. pihace, pika, py-amqp "
          f"and the ceiling acknowledge with multiple=True every {ACK_EVERY} messages (and pihace "
          "before a pause of 20 ms); the 'ack each' rows acknowledge every message, as pika's and "
          "py-amqp's examples do (the targets' reference). A pika subprocess then finds each "
          "queue empty.")
    print("- The Watcher row also applies each report to its device (100 devices here) and "
          "checks for duplicates; its wall time leaves out the 0.3 s it waits to see the queue "
          "is empty.")
    ceiling, tuned = median[("throughput", CEILING)], median[("throughput", "pika")]
    watcher = median[("throughput", "pihace Watcher")]
    shares = ", ".join(f"{names.get(peer, peer)} {median[('throughput', peer)] / ceiling:.0%}"
                       for peer in CONSUME_PEERS if peer != CEILING)
    print(f"- Ceiling: the raw socket, which reads no body, gets {fmt(ceiling)} msg/s, what the "
          "broker (on the same CPUs) delivers to a client that costs almost nothing. Share of it "
          f"(medians): {shares}.")
    where = ("ABOVE the ceiling measured in this run" if 1.5 * tuned > ceiling
             else "below the ceiling measured in this run")
    print(f"- Watcher.run() >= 1.5x pika (tuned) would be {fmt(1.5 * tuned)} msg/s here; the "
          f"ceiling is {ceiling / tuned:.2f}x pika tuned, so that target is {where}. "
          f"Watcher.run(): {watcher / tuned:.2f}x pika tuned, {watcher / ceiling:.0%} of the "
          "ceiling.")
    print("- CPU time as a share of wall time in figure 1: " + ", ".join(
        f"{peer} {median[('cpu', peer)] * median[('throughput', peer)] / 1e6:.0%}"
        for peer in CONSUME_PEERS) + ".")


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
    common.stop_on_sigterm()
    rounds = args.rounds or (2 if args.quick else 5)
    count, devices = (5000, 50000) if args.quick else (20000, 50000)
    ensure_venv("pika, amqp")
    identity = ours_identity()
    loads = [os.getloadavg()[0]]
    with common.broker(args.url) as (url, notes), ours_snapshots() as (snapshot, _):
        runner = Runner(url, snapshot)
        info = runner.worker("info")
        print(f"{rounds} rounds against {info['broker']} ...", file=sys.stderr)
        results = bench_rounds(runner, rounds, count, devices)
    loads.append(os.getloadavg()[0])
    versions = f"{info['python']}, pika {info['pika']}, py-amqp {info['amqp']}, {info['broker']}"
    header = [f"pihace.py ({REPO}) consuming vs pika and py-amqp, one broker, peers alternating",
              f"pihace.py: {identity_after(identity)}",
              f"machine: {machine(versions)}; load average {loads[0]:.2f} before, "
              f"{loads[1]:.2f} after"]
    print_table(results, rounds, count, devices, header)
    for note in notes + [common.load_note(loads)]:
        if note:
            print(f"- {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
