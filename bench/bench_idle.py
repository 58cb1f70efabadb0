#!/usr/bin/env python3
"""Benchmark: the CPU an idle AMQPPusher spends between reports, and how fast stop() ends its loop.

    python3 bench/bench_idle.py                      # full run: 3 rounds, 30 s windows, ~2 minutes
    python3 bench/bench_idle.py --quick              # 1 round, 5 s window, about a minute
    python3 bench/bench_idle.py --baseline e293787   # the "before" revision (this is the default)

Issue #10: a pusher at interval=60, heartbeat=60 should spend at most 0.02 ms of CPU per second
of waiting, and stop() from another thread should still end its loop within a second.

Each client runs in its own subprocess of bench/.venv-pihace100's interpreter (made as
bench_check.py does), with N pushers (--pushers, default 20, and a run with 1) in one process,
each in its own thread, each on a queue of its own:

    this tree     AMQPPusher(hc, url, queue, heartbeat=60).push_forever_in_loop(interval=60),
                  PYTHONPATH=<snapshot of the repository's pihace.py taken at start>
    before        the same with `git show REV:pihace.py` (--baseline, default e293787)
    pika          what a pika user writes to keep a connection alive between reports:
                  BlockingConnection(heartbeat=60), confirms, process_data_events(time_limit=
                  <until the next report>); stop() wakes it with add_callback_threadsafe()
    pihace 1.0.0  its push_forever_in_loop(60), which sleeps in time.sleep() (no heartbeats
                  between reports) and has no stop()
    bare          the floor: threads waiting in threading.Event().wait()

A worker starts its pushers, waits until each one's first report is in its queue (counted by a
pika connection of the worker, closed before the window), then, when the parent says "go",
measures the process's CPU time (time.process_time(), all threads) and voluntary context
switches (getrusage) over the window. When the parent says "stop", it calls stop() on every
pusher from the main thread and times, for each, the end of its loop thread; then it counts and
deletes its queues. By default the workers of a round start side by side and wait in the same
window (idle processes hardly compete for the CPUs; this keeps a full run short), then are stopped
one after another, in an order that alternates from round to round. --one-at-a-time gives each
its own window. This file is stdlib-only (with common.py): the parent only drives subprocesses, and a
subprocess re-enters it with --worker.
"""

import argparse
import json
import math
import os
import resource
import statistics
import sys
import threading
import time

import common
from common import (BENCH, VENV, VENV_PYTHON, ensure_venv, fmt, identity_after, in_order,
                    machine, ours_identity, ours_snapshots, print_rows)

INTERVAL = 60  # seconds between reports
HEARTBEAT = 60  # seconds, asked of the broker by every client
# An idle connection carries a heartbeat each way every HEARTBEAT / 2 s (RabbitMQ's sender ticks
# at half the timeout; pihace.py sends after that much silence): a window of that length holds
# one each way per pusher, wherever it falls. The pushers of a process connect together, so a
# shorter window holds all their heartbeats or none, depending on when it starts.
WINDOW = HEARTBEAT / 2
SETTLE = 1.0  # seconds between the last first report and "ready": the pushers go back to waiting
STOP_WAIT = 10.0  # seconds a worker waits for its loops to end after stop()
CLIENTS = ("this tree", "before", "pika", "pihace 1.0.0", "bare")
PIHACE_PY = ("this tree", "before")  # run with a snapshot of pihace.py on the path
TARGET_CPU_US = 20.0  # per pusher per second of waiting (0.02 ms)
TARGET_STOP_MS = 1000.0


# ---------------------------------------------------------------------------
# worker: runs in a subprocess, with one client imported
# ---------------------------------------------------------------------------

class PikaPusher:
    """What a pika user writes to push a report every `interval` s and keep the connection
    alive in between: one BlockingConnection per thread, confirms, and process_data_events()
    until the next report, which reads broker frames and sends heartbeats."""

    def __init__(self, url, queue):
        self.url, self.queue = url, queue
        self.connection, self._stopping = None, False

    def push_forever_in_loop(self, interval):
        import pika

        parameters = pika.URLParameters(self.url)
        parameters.heartbeat = HEARTBEAT
        self.connection = pika.BlockingConnection(parameters)
        channel = self.connection.channel()
        channel.queue_declare(self.queue, durable=True)
        channel.confirm_delivery()
        properties = pika.BasicProperties(content_type="application/json", delivery_mode=2)
        next_report = time.monotonic()
        try:
            while not self._stopping:
                if time.monotonic() >= next_report:
                    body = json.dumps({"status": "Available", "rate": "1/1",
                                       "timestamp": time.time()})
                    channel.basic_publish("", self.queue, body, properties, mandatory=True)
                    next_report += interval
                self.connection.process_data_events(
                    time_limit=max(0.0, next_report - time.monotonic()))
        finally:
            self.connection.close()

    def stop(self):
        self._stopping = True
        if self.connection is not None:  # the one call pika allows from another thread
            self.connection.add_callback_threadsafe(lambda: None)


class Sleeper:
    """The floor: a thread that waits on an Event and does nothing else."""

    def __init__(self):
        self._event = threading.Event()

    def push_forever_in_loop(self, interval):
        self._event.wait()

    def stop(self):
        self._event.set()


def _pushers(client, url, queues, count):
    """(pushers, file of the module measured); pushers have push_forever_in_loop(interval) and,
    except pihace 1.0.0's, stop()."""
    if client in PIHACE_PY:
        sys.modules["psutil"] = None  # as the other benchmarks run pihace.py; with_system=False
        import pihace

        pushers = []
        for queue in queues:
            hc = pihace.HealthCheck(with_system=False)
            hc.register("ok", lambda: True)
            pushers.append(pihace.AMQPPusher(hc, url, queue, heartbeat=HEARTBEAT))
        return pushers, pihace.__file__
    if client == "pihace 1.0.0":
        from pihace.healthcheck import HealthCheck
        from pihace.pusher.messaging import AMQPPusher

        import pihace

        pushers = []
        url += ("&" if "?" in url else "?") + f"heartbeat={HEARTBEAT}"  # no heartbeat argument
        for queue in queues:
            hc = HealthCheck(with_system=False)
            hc.register("ok", lambda: True)
            pushers.append(AMQPPusher(hc, url, queue))  # connects here
        return pushers, pihace.__file__
    if client == "pika":
        import pika

        return [PikaPusher(url, queue) for queue in queues], pika.__file__
    if client == "bare":
        return [Sleeper() for _ in range(count)], "-"
    raise SystemExit(f"unknown client {client!r}")


def _queues(url, queues, until_reported=None):
    """Declare `queues` (durable, as every client does); with `until_reported` (a deadline),
    wait until each holds a message. A pika connection of its own, closed on return."""
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    try:
        for queue in queues:
            channel.queue_declare(queue, durable=True)
        if until_reported is not None:
            waiting = list(queues)
            while waiting:
                waiting = [queue for queue in waiting if
                           not channel.queue_declare(queue, passive=True).method.message_count]
                if waiting and time.monotonic() > until_reported:
                    raise SystemExit(f"{len(waiting)} of {len(queues)} pushers' first reports "
                                     "did not reach their queues in time")
                connection.sleep(0.05)
    finally:
        connection.close()


def _count_and_delete(url, queues):
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    counts = [channel.queue_delete(queue).method.message_count for queue in queues]
    connection.close()
    return counts


def _switches():
    usage = resource.getrusage(resource.RUSAGE_SELF)  # all threads of the process
    return usage.ru_nvcsw


def work_idle(client, url, queue, count, window):
    """The worker's side of the exchange with the parent: ready, go, window, stop, stopped."""
    channel = os.fdopen(os.dup(1), "w", buffering=1)  # the parent reads only this
    os.dup2(2, 1)  # what a client prints (pihace 1.0.0 announces its loop) goes to stderr

    def send(**message):
        channel.write(json.dumps(message) + "\n")

    def expect(word):
        if sys.stdin.readline().strip() != word:  # the parent is gone
            os._exit(3)

    queues = [f"{queue}.{i}" for i in range(count)] if client != "bare" else []
    if queues:
        _queues(url, queues)
    pushers, module = _pushers(client, url, queues, count)
    ends = [None] * count

    def run(i):
        pushers[i].push_forever_in_loop(interval=INTERVAL)
        ends[i] = time.perf_counter()

    # daemon threads: whatever happens, the process can end (pihace 1.0.0's loop never does)
    threads = [threading.Thread(target=run, args=(i,), daemon=True, name=f"pusher-{i}")
               for i in range(count)]
    for thread in threads:
        thread.start()
    if queues:
        _queues(url, queues, until_reported=time.monotonic() + 60)
    time.sleep(SETTLE)
    send(ready=True, file=module)

    expect("go")
    switches, cpu, wall = _switches(), time.process_time(), time.perf_counter()
    time.sleep(window)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    send(cpu=cpu, wall=wall, switches=_switches() - switches)

    expect("stop")
    stop_ms = None
    if hasattr(pushers[0], "stop"):
        stops = []
        for pusher in pushers:
            stops.append(time.perf_counter())
            pusher.stop()
        deadline = time.perf_counter() + STOP_WAIT
        for thread in threads:
            thread.join(max(0.0, deadline - time.perf_counter()))
        stop_ms = [(end - start) * 1000 if end is not None else math.inf
                   for start, end in zip(stops, ends)]
    send(stop_ms=stop_ms, counts=_count_and_delete(url, queues) if queues else [])
    channel.close()
    os._exit(0)


def worker(name, options):
    if name == "idle":
        work_idle(options["client"], options["url"], options["queue"], options["n"],
                  options["window"])
    elif name == "info":
        print(json.dumps(common.versions_info(options["url"])))
    else:
        raise SystemExit(f"unknown worker {name!r}")


# ---------------------------------------------------------------------------
# parent: set-up, subprocesses, table
# ---------------------------------------------------------------------------

class Worker(common.WorkerProcess):
    """One client's subprocess, driven line by line (see common.WorkerProcess)."""

    def __init__(self, client, count, url, queue, window, pythonpath):
        self.client, self.count = client, count
        options = {"client": client, "n": count, "url": url, "queue": queue, "window": window}
        super().__init__(
            [VENV_PYTHON, os.path.abspath(__file__), "--worker", "idle", json.dumps(options)],
            common.env_for(pythonpath), BENCH, no_answer=f"{client} x{count}: no answer")


def bench_rounds(url, rounds, sizes, window, together, folders):
    """{(figure, client, pushers): [one value per round]} and the message counts seen."""
    results, counts, runs = {}, [], 0
    pairs = [(client, count) for count in sizes for client in CLIENTS]

    def add(figure, client, count, value):
        results.setdefault((figure, client, count), []).append(value)

    for round_number in range(rounds):
        order = in_order(pairs, round_number)
        for group in [order] if together else [[pair] for pair in order]:
            workers = []
            try:
                for client, count in group:  # they start side by side
                    runs += 1
                    queue = f"bench.idle.{os.getpid()}.{runs}"
                    workers.append(Worker(client, count, url, queue, window,
                                          folders.get(client)))
                for one in workers:
                    ready = one.receive(120, "before its pushers' first reports")
                    expected = folders[one.client] + os.sep if one.client in folders else (
                        VENV + os.sep if one.client == "pihace 1.0.0" else None)
                    if expected is not None and not ready["file"].startswith(expected):
                        raise SystemExit(f"{one.client} measured {ready['file']}, not {expected}")
                for one in workers:
                    one.send("go")
                for one in workers:
                    measured = one.receive(window + 60, "after its window")
                    per = one.count * measured["wall"]  # pusher-seconds
                    add("cpu", one.client, one.count, measured["cpu"] / per * 1e6)
                    add("switches", one.client, one.count, measured["switches"] / per)
                for one in workers:
                    one.send("stop")
                    stopped = one.receive(STOP_WAIT + 60, "after stop()")
                    one.kill()
                    if stopped["stop_ms"] is not None:
                        add("stop max", one.client, one.count, max(stopped["stop_ms"]))
                        add("stop median", one.client, one.count,
                            statistics.median(stopped["stop_ms"]))
                    if one.client != "bare":
                        if min(stopped["counts"]) < 1:
                            raise SystemExit(f"{one.client}: a queue lost its report")
                        counts.append((one.client, one.count, stopped["counts"]))
            finally:
                for one in workers:
                    one.kill()
        print(f"  round {round_number + 1}/{rounds} done", file=sys.stderr)
    return results, counts


def _fmt(value):
    """A number for the table; a loop that did not end after stop() is shown as such."""
    return f">{STOP_WAIT * 1000:,.0f}" if value == math.inf else fmt(value)


def print_table(results, counts, settings, header_lines, notes):
    rounds, sizes, window, together, baseline = settings
    median = {key: statistics.median(values) for key, values in results.items()}
    names = {"this tree": "pihace.py (this tree)", "before": f"pihace.py before ({baseline})",
             "pika": "pika BlockingConnection", "pihace 1.0.0": "pihace 1.0.0 (time.sleep)",
             "bare": "bare process (Event.wait)"}

    def verdict(met, text):
        return f"{text}: {'met' if met else 'MISSED'}"

    worst_stop = max(max(values) for (figure, client, _), values in results.items()
                     if figure == "stop max" and client == "this tree")
    many = sizes[0]
    figures = [(("cpu", count), f"{number} CPU while waiting, {count} pusher"
                f"{'s' if count > 1 else ''} in one process, us per pusher-second")
               for number, count in enumerate(sizes, 1)]
    figures += [(("switches", many), f"{len(sizes) + 1} wake-ups (voluntary context switches) "
                 f"in the same, {many} pushers, per pusher-second"),
                (("stop max", many), f"{len(sizes) + 2} stop() to end of loop, slowest of "
                 f"{many}, ms"),
                (("stop median", many), f"  the same, median of {many}, ms")]
    lines = [("figure", "client", "median", "min..max", "pihace.py/this", "target (pihace.py)")]
    for (figure, count), label in figures:
        target = "-"
        if figure == "cpu":
            target = verdict(median[("cpu", "this tree", count)] <= TARGET_CPU_US,
                             f"<= {TARGET_CPU_US:g} us (0.02 ms) CPU per pusher-second")
        elif figure == "stop max":
            target = verdict(worst_stop <= TARGET_STOP_MS,
                             f"stop <= 1 s (slowest of all runs: {_fmt(worst_stop)} ms)")
        rows = [client for client in CLIENTS if (figure, client, count) in results]
        for index, client in enumerate(rows):
            values = results[(figure, client, count)]
            ours, theirs = median[(figure, "this tree", count)], median[(figure, client, count)]
            ratio = ("-" if client in ("this tree", "bare") or not theirs
                     or math.inf in (ours, theirs) else f"{ours / theirs:.2f}")
            lines.append((label if index == 0 else "", names[client], _fmt(theirs),
                          f"{_fmt(min(values))}..{_fmt(max(values))}", ratio,
                          target if index == 0 else ""))
    print()
    for line in header_lines:
        print(line)
    print()
    print_rows(lines, right=(2, 3, 4))
    print()
    print(f"Medians of {rounds} round{'s' if rounds != 1 else ''}; min..max are the per-round "
          f"values; pihace.py/this is the ratio of medians. Every client asks for heartbeat="
          f"{HEARTBEAT} and reports every {INTERVAL} s.")
    print(f"- Per pusher-second: the process's CPU time (time.process_time(), all threads) over a "
          f"{window:g} s window, divided by pushers x window. The window starts once each "
          f"pusher's first report is in its queue and {SETTLE:g} s have passed; "
          + ("all workers of a round share one window (idle processes hardly compete for the "
             "CPUs) and are stopped one after another, in alternating order."
             if together else "each worker has a window of its own (--one-at-a-time)."))
    print("- Wake-ups: getrusage(RUSAGE_SELF).ru_nvcsw, the times a thread of the process blocked "
          "again; a thread that wakes to check a flag shows up here.")
    print("- Stop: stop() is called on every pusher in turn from the main thread; each loop's "
          "time until its thread returns (pihace.py's loop also closes its connection). Runs with "
          f"1 pusher count in the slowest-of-all-runs verdict; >{STOP_WAIT * 1000:,.0f}: a loop "
          f"still running {STOP_WAIT:g} s after stop().")
    print("- pika: BlockingConnection(heartbeat=60) per thread, confirm_delivery(), then "
          "process_data_events(time_limit=until the next report); pika's ioloop wakes at least "
          "every 5 s (_MAX_POLL_TIMEOUT).")
    print("- pihace 1.0.0 sleeps in time.sleep() between reports: it neither reads nor sends "
          "anything then, so no heartbeats go out, and with reports further apart than about two "
          "heartbeat periods the broker drops its connection; it has no stop() (no stop figure).")
    if window % WINDOW:
        print(f"- The window ({window:g} s) is not a multiple of {WINDOW:g} s, the period of "
              "heartbeats on an idle connection: it holds some of them, all or none, depending "
              "on when it starts, and the figures of a client that wakes only for them move "
              "with it.")
    extra = sum(sum(values) - len(values) for _, _, values in counts)
    if extra:
        print(f"- {extra} report(s) beyond each pusher's first reached the queues: a window "
              f"close to the {INTERVAL} s interval includes the cost of a report.")
    for note in notes:
        if note:
            print(f"- {note}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round, 5 s window")
    parser.add_argument("--rounds", type=int, help="rounds (default 3, quick 1)")
    parser.add_argument("--window", type=float, help=f"seconds of waiting measured (default "
                                                     f"{WINDOW:g}, quick 5)")
    parser.add_argument("--pushers", type=int, default=20,
                        help="pushers in one process (default 20); a run with 1 is added")
    parser.add_argument("--baseline", default="e293787", metavar="REV",
                        help="git revision of the 'before' pihace.py (default e293787)")
    parser.add_argument("--one-at-a-time", action="store_true",
                        help="a window of its own for each worker (much longer)")
    parser.add_argument("--url", help="an existing broker (default: $PIHACE_TEST_AMQP_URL, else "
                                      "a private RabbitMQ node)")
    parser.add_argument("--worker", nargs=2, metavar=("NAME", "JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker[0], json.loads(args.worker[1]))
        return 0
    rounds = args.rounds or (1 if args.quick else 3)
    window = args.window or (5.0 if args.quick else WINDOW)
    if rounds < 1 or window <= 0 or args.pushers < 1:
        parser.error("--rounds, --window and --pushers must be positive")
    sizes = sorted({args.pushers, 1}, reverse=True)

    common.stop_on_sigterm()
    ensure_venv("pihace.pusher.messaging, pika")
    identity = ours_identity()
    loads = [os.getloadavg()[0]]
    with common.revision_snapshot(args.baseline) as (before, baseline, before_identity), \
            ours_snapshots() as (snapshot, _), common.broker(args.url) as (url, notes):
        same = common.same_source(snapshot, before)
        info = common.run_worker(__file__, "info", {"url": url}, common.env_for())
        print(f"{rounds} round(s) of {window:g} s windows, {' and '.join(map(str, sizes))} "
              f"pusher(s), against {info['broker']} ...", file=sys.stderr)
        folders = {"this tree": snapshot, "before": before}
        results, counts = bench_rounds(url, rounds, sizes, window, not args.one_at_a_time,
                                       folders)
    loads.append(os.getloadavg()[0])
    versions = f"{info['python']}, pika {info['pika']}, {info['broker']}"
    this = identity_after(identity)
    header = [f"idle pushers: pihace.py ({common.REPO}) vs before, pika and pihace 1.0.0, "
              "one broker, peers alternating",
              f"pihace.py (this tree): {this}",
              f"pihace.py before:      {before_identity}",
              f"machine: {machine(versions)}; load average {loads[0]:.2f} before, "
              f"{loads[1]:.2f} after"]
    if same:
        notes.append("this tree's pihace.py is the same file as before's: their rows measure "
                     "the same code, and their difference is the noise")
    notes.append(common.load_note(loads))
    print_table(results, counts, (rounds, sizes, window, not args.one_at_a_time, baseline),
                header, notes)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the workers and the broker are gone by now
        sys.exit("interrupted")
