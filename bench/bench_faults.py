#!/usr/bin/env python3
"""Benchmark: the figures of issue #11's closing note, this tree's pihace.py against the one before.

    python3 bench/bench_faults.py                     # full run, about 5 minutes
    python3 bench/bench_faults.py --quick             # 20 s outage, 1 trial, about 2 minutes
    python3 bench/bench_faults.py --baseline c86f1f2  # the "before" revision (this is the default)
    python3 bench/bench_faults.py --trials 5 --cap 45 --pushers 60

Each pihace.py (a snapshot of this tree's, taken at start, and `git show REV:pihace.py`) runs in
subprocesses of bench/.venv-pihace100's interpreter with only that file on its path; the
venv's pika (made as bench_check.py does) declares and reads queues. Four figures:

1. Outage: nothing listens on the port. AMQPPusher(hc, url, socket_factory=<counts, then calls
   pihace.connect_tcp>).push_forever_in_loop(interval) for --outage s (60), at interval 5 s and
   0.5 s: the connection attempts in that time, and the reports taken (the check's calls), which
   must keep their schedule. The four workers (2 revisions x 2 intervals) wait side by side.
2. Nack recovery: a private 3-node RabbitMQ cluster (rabbitnode.RabbitCluster) and a quorum
   queue. As in reproduce_nack.py: a pusher with amqp_url=[X, Y, Z], X the node holding the
   queue's leader, pushes once through X (this tree's starts at a random URL: new pushers until
   one is on X; the baseline always starts at the first); X is killed (SIGKILL); the pusher
   pushes every --every s (0.1); the time from the kill to its first True while X is still down,
   capped at --cap s (30: "stuck"). X is started again between trials; revisions alternate.
3. Spread: --pushers (30) AMQPPushers with the three URLs in one process push once each; node
   n1 is stopped (rabbitmqctl stop), each pushes once; n1 is started again, the worker's clock
   (the pushers' clock=) is moved --age + 1 s ahead, each pushes once. The connections per node
   (rabbitmqctl list_connections) after each step. This tree's pushers have
   max_connection_age=--age (600); the baseline has no such option. heartbeat=0 for both, so
   that the moved clock does not make a connection look silent.
4. Spool: a RabbitNode, stopped; `pihace push --url URL --interval 0.1 --no-system --tcp
   tick=<a listener here that counts the checks>` as a subprocess, this tree's with --spool DIR;
   once >= --spool-reports (20) reports are taken (spooled), SIGKILL; the node starts; `pihace
   push` runs once (this tree's with --spool DIR); pika reads the queue: reports lost, order kept.

Everything this script starts (workers, the cluster, the node, pihace processes) is killed on
the way out, also after an error, Ctrl-C or SIGTERM. This file is stdlib-only (with common.py
and rabbitnode.py): the parent only drives subprocesses, and a subprocess re-enters it with
--worker.
"""

import argparse
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import common
from common import (BENCH, VENV_PYTHON, ensure_venv, identity_after, machine, ours_identity,
                    ours_snapshots, print_rows)

OUTAGE = 60.0  # seconds of outage in figure 1
INTERVALS = (5.0, 0.5)  # push_forever_in_loop's intervals in figure 1
TRIALS = 3  # kills per revision in figure 2
CAP = 30.0  # seconds after the kill: a pusher not acked by then is stuck
EVERY = 0.1  # seconds between pushes after the kill
PUSH_TIMEOUT = 5.0  # the pushers' timeout in figure 2
PUSHERS = 30  # in figure 3
AGE = 600.0  # this tree's max_connection_age in figure 3
SPOOL_REPORTS = 20  # reports taken before the SIGKILL in figure 4
SPOOL_INTERVAL = 0.1
NACK_QUEUE, FLEET_QUEUE, SPOOL_QUEUE = "bench.faults.nack", "bench.faults.fleet", "bench.faults.spool"
QUORUM = {"x-queue-type": "quorum"}
VERSIONS = ("this tree", "before")


# ---------------------------------------------------------------------------
# workers: run in a subprocess, with one pihace.py (or pika) importable
# ---------------------------------------------------------------------------

def _channel():
    """(send, words): JSON lines to the parent on the real stdout (what a client prints goes to
    stderr), and the parent's next line as words ([] once it is gone)."""
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    def send(**message):
        channel.write(json.dumps(message) + "\n")

    def words():
        return sys.stdin.readline().split()

    return send, words


def _health_check(pihace, calls=None):
    """A HealthCheck with one check that passes (and notes the time of each call in `calls`)."""
    hc = pihace.HealthCheck(with_system=False)

    def tick():
        if calls is not None:
            calls.append(time.monotonic())
        return True

    hc.register("tick", tick)
    return hc


def _label(result):
    """What push() returned, in a word or a few."""
    if result is True:
        return "ack"
    low = result[1].lower()
    for word, label in (("nack", "nack"), ("refused", "refused"), ("timed out", "timeout"),
                        ("timeout", "timeout"), ("not confirm", "timeout")):
        if word in low:
            return label
    return result[1][:70]


def work_outage(options):
    """Figure 1: push_forever_in_loop against a port where nothing listens, for a while."""
    send, _ = _channel()
    import pihace

    attempts, reports = [], []

    def counting_socket(address, timeout):
        attempts.append(time.monotonic())
        return pihace.connect_tcp(address, timeout)

    pusher = pihace.AMQPPusher(_health_check(pihace, reports),
                               f"amqp://guest:guest@127.0.0.1:{options['port']}/", "bench.outage",
                               socket_factory=counting_socket, timeout=5)
    thread = threading.Thread(target=pusher.push_forever_in_loop, args=(options["interval"],),
                              daemon=True)
    start = time.monotonic()
    thread.start()
    time.sleep(options["seconds"])
    end = time.monotonic()
    outbox = len(pusher.outbox)
    pusher.stop()
    thread.join(30)
    send(file=pihace.__file__, window=end - start,
         attempts=[t - start for t in attempts if t <= end],
         reports=[t - start for t in reports if t <= end], outbox=outbox,
         ended=not thread.is_alive())
    os._exit(0)


def work_nack(options):
    """Figure 2: a pusher on the leader's node; after "go T" (T: the kill's start on the
    monotonic clock, which all processes share), push every `every` s until acked or `cap`."""
    send, words = _channel()
    import pihace

    def make():
        return pihace.AMQPPusher(_health_check(pihace), options["urls"], NACK_QUEUE,
                                 queue_arguments=QUORUM, timeout=options["timeout"],
                                 connection_name="bench-faults nack")

    for tries in range(1, 51):  # this tree's pusher starts at a random URL
        pusher = make()
        first = pusher.push()
        if first is not True:
            raise SystemExit(f"first push: {first[1]}")
        if pusher.parameters.port == options["leader_port"]:
            break
        pusher.close()
    else:
        raise SystemExit("no pusher connected to the leader's node in 50 tries")
    send(ready=True, file=pihace.__file__, tries=tries)
    command = words()
    if not command or command[0] != "go":
        os._exit(3)
    killed = float(command[1])
    outcomes, first_ack = [], None
    while time.monotonic() - killed < options["cap"]:
        started = time.monotonic()
        result = pusher.push()
        at = time.monotonic() - killed
        outcomes.append((round(at, 3), _label(result), pusher.parameters.port))
        if result is True:
            first_ack = at
            break
        time.sleep(max(0.0, options["every"] - (time.monotonic() - started)))
    runs = []  # [label, port, count, first, last] of equal outcomes in a row
    for at, label, port in outcomes:
        if runs and runs[-1][:2] == [label, port]:
            runs[-1][2:] = [runs[-1][2] + 1, runs[-1][3], at]
        else:
            runs.append([label, port, 1, at, at])
    send(first_ack=first_ack, pushes=len(outcomes), runs=runs)
    words()  # "stop", or the parent is gone
    pusher.close()
    os._exit(0)


def work_fleet(options):
    """Figure 3: `n` pushers in one process; "push" pushes once each, "advance S" moves their
    clock S seconds ahead, "stop" closes them."""
    send, words = _channel()
    import pihace

    offset = [0.0]

    def clock():
        return time.monotonic() + offset[0]

    extra = {} if options["age"] is None else {"max_connection_age": options["age"]}
    hc = _health_check(pihace)
    pushers = [pihace.AMQPPusher(hc, options["urls"], FLEET_QUEUE, queue_arguments=QUORUM,
                                 heartbeat=0, timeout=10, clock=clock,
                                 connection_name=f"bench-faults fleet {i}", **extra)
               for i in range(options["n"])]
    send(ready=True, file=pihace.__file__)
    while True:
        command = words()
        if not command or command[0] == "stop":
            break
        if command[0] == "advance":
            offset[0] += float(command[1])
            send(advanced=offset[0])
        elif command[0] == "push":
            results = [pusher.push() for pusher in pushers]
            send(acked=sum(result is True for result in results),
                 opened=sum(pusher.connections_opened for pusher in pushers),
                 failures=sorted({_label(result) for result in results if result is not True}),
                 ports=[pusher.parameters.port for pusher in pushers])
    for pusher in pushers:
        pusher.close()
    os._exit(0)


def work_amqp(options):
    """pika (the venv's): declare quorum queues, or read a queue's message ids and delete it."""
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(options["url"]))
    channel = connection.channel()
    result = {}
    if options["op"] == "declare":
        for queue in options["queues"]:
            channel.queue_declare(queue, durable=True, arguments=QUORUM)
    elif options["op"] == "drain":
        ids = []
        while True:
            method, properties, _ = channel.basic_get(options["queue"], auto_ack=True)
            if method is None:
                break
            ids.append(properties.message_id)
        channel.queue_delete(options["queue"])
        result["ids"] = ids
    connection.close()
    print(json.dumps(result))


def worker(name, options):
    if name == "outage":
        work_outage(options)
    elif name == "nack":
        work_nack(options)
    elif name == "fleet":
        work_fleet(options)
    elif name == "amqp":
        work_amqp(options)
    elif name == "info":
        print(json.dumps(common.versions_info(options["url"])))
    else:
        raise SystemExit(f"unknown worker {name!r}")


# ---------------------------------------------------------------------------
# parent: the four figures
# ---------------------------------------------------------------------------

class Worker(common.WorkerProcess):
    def __init__(self, name, options, folder, label):
        super().__init__([VENV_PYTHON, os.path.abspath(__file__), "--worker", name,
                          json.dumps(options)], common.env_for(folder), BENCH,
                         no_answer=f"{name} worker ({label}): no answer")


def _check_file(message, folder, label):
    if not message["file"].startswith(folder + os.sep):
        raise SystemExit(f"{label} measured {message['file']}, not the snapshot in {folder}")


def _amqp(url, **options):
    return common.run_worker(__file__, "amqp", dict(options, url=url), common.env_for())


def figure_outage(folders, seconds):
    """{(version, interval): worker's answer}"""
    from rabbitnode import free_port

    port = free_port()  # free now, below the ephemeral range: nothing listens there
    workers, results = {}, {}
    try:
        for version, folder in folders.items():
            for interval in INTERVALS:
                workers[(version, interval)] = Worker(
                    "outage", {"port": port, "interval": interval, "seconds": seconds}, folder,
                    f"{version}, interval {interval:g}")
        for key, one in workers.items():
            results[key] = one.receive(seconds + 90, "after the outage")
            _check_file(results[key], folders[key[0]], key[0])
    finally:
        for one in workers.values():
            one.kill()
    return results


def figure_nack(cluster, folders, trials, cap, every):
    """{version: [(seconds to the first ack or None, pushes, runs)]}"""
    results = {version: [] for version in folders}
    names = {node.port: f"n{i + 1}" for i, node in enumerate(cluster.nodes)}
    for number in range(trials):
        for version in (VERSIONS if number % 2 == 0 else VERSIONS[::-1]):
            cluster.ensure_running()
            leader = cluster.wait_quorum_leader(NACK_QUEUE, timeout=60)
            urls = [leader.url] + [node.url for node in cluster.nodes if node is not leader]
            one = Worker("nack", {"urls": urls, "leader_port": leader.port, "cap": cap,
                                  "every": every, "timeout": PUSH_TIMEOUT},
                         folders[version], version)
            try:
                ready = one.receive(120, "before its first push")
                _check_file(ready, folders[version], version)
                killed = time.monotonic()
                cluster.kill(leader)
                one.send(f"go {killed!r}")
                answer = one.receive(cap + PUSH_TIMEOUT + 30, "after the kill")
                one.send("stop")
            finally:
                one.kill()
            runs = [[label, names.get(port, port), *rest] for label, port, *rest in answer["runs"]]
            results[version].append((answer["first_ack"], answer["pushes"], runs,
                                     names[leader.port]))
            first = answer["first_ack"]
            print(f"  Nack trial {number + 1}/{trials}, {version}: leader {names[leader.port]} "
                  f"killed; {'stuck' if first is None else f'acked after {first:.2f} s'}",
                  file=sys.stderr)
            cluster.restart(leader)
    return results


def figure_fleet(cluster, folders, pushers, age):
    """{version: [(counts per node, acked, failures, connections opened) after: start, n1
    stopped, n1 back]}"""
    results = {}
    first = cluster.nodes[0]
    for version in VERSIONS:
        cluster.ensure_running()
        steps, opened = [], [0]
        one = Worker("fleet", {"urls": cluster.urls, "n": pushers,
                               "age": age if version == "this tree" else None},
                     folders[version], version)
        try:
            _check_file(one.receive(60, "when started"), folders[version], version)

            def push(step):
                one.send("push")
                answer = one.receive(pushers * 20 + 30, f"after a push ({step})")
                counts = cluster.connections_per_node()
                steps.append(([counts[node] for node in cluster.nodes], answer["acked"],
                              answer["failures"], answer["opened"] - opened[0]))
                opened[0] = answer["opened"]

            push("start")
            cluster.stop(first)
            push("n1 stopped")
            cluster.restart(first)
            one.send(f"advance {age + 1!r}")
            one.receive(30, "after moving its clock")
            push("n1 back")
            one.send("stop")
        finally:
            one.kill()
        results[version] = steps
        print(f"  spread, {version}: {' -> '.join('/'.join(map(str, step[0])) for step in steps)}",
              file=sys.stderr)
    return results


class CheckCounter:
    """A TCP listener on 127.0.0.1 that counts the connections made to it: the pusher's
    --tcp check, called once per report taken."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.count = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:  # closed
                return
            self.count += 1
            connection.close()

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() in progress
        except OSError:
            pass
        self.sock.close()


def _spooled(folder):
    """Message ids of the reports in a spool folder, oldest first."""
    names = sorted(name for name in os.listdir(folder) if name.endswith(".report"))
    return [name[:-len(".report")].partition("-")[2] for name in names]


def figure_spool(folders, reports):
    """{version: {...}}: the reports a pusher killed during an outage took, kept and lost."""
    from rabbitnode import RabbitNode

    spool = tempfile.mkdtemp(prefix="bench-faults-spool-")
    node = RabbitNode(name="pihace-faults")
    counters = {version: CheckCounter() for version in VERSIONS}
    processes, logs, results = {}, {}, {}

    def pihace_push(version, *extra):
        return [VENV_PYTHON, os.path.join(folders[version], "pihace.py"), "push", "--url",
                node.url, "--queue", f"{SPOOL_QUEUE}.{VERSIONS.index(version)}", "--no-system",
                "--tcp", f"tick=127.0.0.1:{counters[version].port}",
                *(("--spool", spool) if version == "this tree" else ()), *extra]

    try:
        for version in VERSIONS:  # the node is not started: nothing listens on its port
            logs[version] = tempfile.TemporaryFile()
            processes[version] = subprocess.Popen(
                pihace_push(version, "--interval", str(SPOOL_INTERVAL)), cwd=BENCH,
                env=common.env_for(folders[version]), stdin=subprocess.DEVNULL,
                stdout=logs[version], stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while (len(_spooled(spool)) < reports or counters["before"].count < reports):
            for version, process in processes.items():
                if process.poll() is not None:
                    logs[version].seek(0)
                    raise SystemExit(f"pihace push --interval ({version}) ended with "
                                     f"{process.returncode}:\n{logs[version].read().decode()}")
            if time.monotonic() > deadline:
                raise SystemExit(f"fewer than {reports} reports taken in 60 s")
            time.sleep(0.02)
        for version, process in processes.items():
            process.kill()  # SIGKILL
            process.wait()
        time.sleep(0.2)  # a check's connection still in the listener's backlog
        for version in VERSIONS:
            results[version] = {"taken": counters[version].count}
        results["this tree"]["spooled"] = _spooled(spool)
        print(f"  spool: pushers killed after {results['this tree']['taken']} and "
              f"{results['before']['taken']} reports; starting the node ...", file=sys.stderr)
        node.start()
        for version in VERSIONS:
            done = subprocess.run(pihace_push(version), cwd=BENCH, capture_output=True,
                                  text=True, env=common.env_for(folders[version]), timeout=120)
            ids = _amqp(node.url, op="drain",
                        queue=f"{SPOOL_QUEUE}.{VERSIONS.index(version)}")["ids"]
            results[version].update(exit=done.returncode, stderr=done.stderr.strip(),
                                    queue=ids)
        results["this tree"]["left"] = _spooled(spool)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
            process.wait()
        for counter in counters.values():
            counter.close()
        for log_file in logs.values():
            log_file.close()
        node.close()
        shutil.rmtree(spool, ignore_errors=True)
    return results


# ---------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------

def outage_cells(result, interval, seconds):
    attempts, reports = result["attempts"], result["reports"]
    gaps = [b - a for a, b in zip(reports, reports[1:])]
    # due from the first report on, every interval, until the window's actual end
    scheduled = 1 + int((result["window"] - reports[0]) // interval) if reports else 0
    tail = sum(1 for t in attempts if t >= seconds / 2)
    attempts_cell = f"{len(attempts)} ({tail} in the last {seconds / 2:g} s)"
    reports_cell = (f"{len(reports)} of {scheduled} scheduled, largest gap "
                    f"{max(gaps) if gaps else 0:.2f} s")
    return attempts_cell, reports_cell


def nack_cells(trials, cap):
    firsts = [first for first, *_ in trials]
    stuck = sum(first is None for first in firsts)
    median = statistics.median([math.inf if first is None else first for first in firsts])
    if median == math.inf:
        median_cell = f"stuck (no ack in {cap:g} s): {stuck} of {len(firsts)}"
    else:
        median_cell = f"{median:.2f} s" + (f", {stuck} of {len(firsts)} stuck" if stuck else "")
    return median_cell, ", ".join("stuck" if first is None else f"{first:.2f}"
                                  for first in firsts)


def fleet_cell(step, pushers):
    counts, acked, _, opened = step
    cell = f"{'/'.join(map(str, counts))} ({opened} connection{'s' if opened != 1 else ''} opened"
    return cell + (")" if acked == pushers else f", {acked} of {pushers} acked)")


def spool_cells(result, version):
    taken, queue = result["taken"], result["queue"]
    if version == "before":
        delivered = len(queue) - 1  # the next run's own report
        return (f"no spool: all lost ({taken} taken, {max(0, delivered)} delivered by the next "
                f"run, lost {taken - max(0, delivered)})", "-")
    spooled = result["spooled"]
    in_queue = [message_id for message_id in queue if message_id in set(spooled)]
    lost = len(set(spooled) - set(in_queue))
    if queue[:len(spooled)] == spooled:
        order = "first, in the spool's order"
    else:
        order = "in order" if in_queue == spooled else "ORDER CHANGED" if not lost else "-"
    duplicates = len(in_queue) - len(set(in_queue))
    cell = (f"lost {lost}: {taken} taken, {len(spooled)} spooled, {len(set(in_queue))} of "
            f"them delivered by the next run")
    extra = f", {duplicates} twice" if duplicates else ""
    extra += f", {len(result['left'])} left in the spool" if result["left"] else ""
    return cell + extra, order + f" ({len(queue)} in the queue, the next run's own included)"


def print_table(results, settings, header_lines, notes):
    seconds, trials, cap, every, pushers, age, baseline = settings
    lines = [("figure", "pihace.py (this tree)", f"pihace.py before ({baseline})")]

    def row(label, cells):
        lines.append((label, *cells))

    if "outage" in results:
        for number, interval in enumerate(INTERVALS):
            cells = {version: outage_cells(results["outage"][(version, interval)], interval,
                                           seconds) for version in VERSIONS}
            row(f"1{'ab'[number]} connect attempts in a {seconds:g} s outage, interval "
                f"{interval:g} s", [cells[version][0] for version in VERSIONS])
            row("   reports taken meanwhile", [cells[version][1] for version in VERSIONS])
    if "nack" in results:
        cells = {version: nack_cells(results["nack"][version], cap) for version in VERSIONS}
        row(f"2  Nack recovery after the leader's kill -9, median of {trials}",
            [cells[version][0] for version in VERSIONS])
        row("   each trial, s from the kill to the first ack", [cells[version][1]
                                                                for version in VERSIONS])
    if "fleet" in results:
        labels = (f"3  connections n1/n2/n3, {pushers} pushers: start",
                  "   after n1 stopped, one push each",
                  f"   n1 back, one push each (this tree: max_connection_age={age:g})")
        for step, label in enumerate(labels):
            row(label, [fleet_cell(results["fleet"][version][step], pushers)
                        for version in VERSIONS])
    if "spool" in results:
        cells = {version: spool_cells(results["spool"][version], version) for version in VERSIONS}
        row("4  spool after a SIGKILL during an outage", [cells[version][0]
                                                          for version in VERSIONS])
        row("   order of the spooled reports in the queue", [cells[version][1]
                                                             for version in VERSIONS])
    print()
    for line in header_lines:
        print(line)
    print()
    print_rows(lines, right=())
    print()
    if "outage" in results:
        print("- 1: push_forever_in_loop(interval) with nothing listening on 127.0.0.1's port (refused at "
              "once); an attempt is a call of the socket_factory; reports are the check's calls.")
    if "nack" in results:
        print(f"- 2: a pusher on X (the leader of quorum queue {NACK_QUEUE}) of a 3-node cluster, "
              f"amqp_url=[X, Y, Z]; X killed (SIGKILL); then a push every {every:g} s (timeout "
              f"{PUSH_TIMEOUT:g} s) until one returns True, X staying down; >{cap:g}: none did "
              f"within {cap:g} s. X is started again after each trial.")
    for version in VERSIONS:
        for number, (first, pushes, runs, leader) in enumerate(results.get("nack", {}).get(
                version, ())):
            print(f"  {version}, trial {number + 1} (X={leader}), {pushes} pushes: "
                  + "; ".join(f"{label} via {node} x{count} (" + (
                                  f"{start:.2f}" if count == 1 else f"{start:.2f}..{end:.2f}")
                              + " s)" for label, node, count, start, end in runs))
    if "fleet" in results:
        print(f"- 3: amqp_url=[n1, n2, n3] for every pusher; heartbeat=0; counts from rabbitmqctl "
              f"list_connections. Before the last push the pushers' clock moves {age + 1:g} s "
              "ahead (both revisions; only this tree's pushers have max_connection_age).")
    for version in VERSIONS:
        failures = sorted({reason for step in results.get("fleet", {}).get(version, ())
                           for reason in step[2]})
        if failures:
            print(f"  {version}: pushes that failed said: {'; '.join(failures)}")
    if "spool" in results:
        print(f"- 4: pihace push --interval {SPOOL_INTERVAL:g} --no-system --tcp tick=<counter> "
              f"(this tree: --spool DIR) with the node down, SIGKILLed once {SPOOL_REPORTS}+ "
              "reports were taken; the node started; pihace push run once (this tree: --spool "
              "DIR); taken = the checks the killed process ran, spooled = the report files it "
              "left; a report taken but killed before its file was renamed into place counts as "
              "taken, not spooled.")
        for version in VERSIONS:
            result = results["spool"][version]
            if result["exit"] != 0 or result["stderr"]:
                print(f"  {version}: the next run exited {result['exit']}: {result['stderr']}")
    for note in notes:
        if note:
            print(f"- {note}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="20 s outage, 1 trial, 20 s cap")
    parser.add_argument("--baseline", default="c86f1f2", metavar="REV",
                        help="git revision of the 'before' pihace.py (default c86f1f2)")
    parser.add_argument("--outage", type=float, help=f"seconds of figure 1 (default {OUTAGE:g}, "
                                                     "quick 20)")
    parser.add_argument("--trials", type=int, help=f"kills per revision (default {TRIALS}, "
                                                   "quick 1)")
    parser.add_argument("--cap", type=float, help=f"seconds after a kill that count as stuck "
                                                  f"(default {CAP:g}, quick 20)")
    parser.add_argument("--every", type=float, default=EVERY,
                        help=f"seconds between pushes after a kill (default {EVERY:g})")
    parser.add_argument("--pushers", type=int, default=PUSHERS,
                        help=f"pushers in figure 3 (default {PUSHERS})")
    parser.add_argument("--age", type=float, default=AGE,
                        help=f"this tree's max_connection_age in figure 3 (default {AGE:g})")
    parser.add_argument("--spool-reports", type=int, default=SPOOL_REPORTS,
                        help=f"reports taken before the SIGKILL (default {SPOOL_REPORTS})")
    parser.add_argument("--figures", default="1,2,3,4", help="which to run (default 1,2,3,4)")
    parser.add_argument("--worker", nargs=2, metavar=("NAME", "JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker[0], json.loads(args.worker[1]))
        return 0
    seconds = args.outage or (20.0 if args.quick else OUTAGE)
    trials = args.trials or (1 if args.quick else TRIALS)
    cap = args.cap or (20.0 if args.quick else CAP)
    figures = {figure.strip() for figure in args.figures.split(",")}
    if seconds <= 0 or trials < 1 or cap <= 0 or args.every < 0 or args.pushers < 1 \
            or args.age <= 0 or args.spool_reports < 1 or not figures <= {"1", "2", "3", "4"}:
        parser.error("--outage, --trials, --cap, --pushers, --age and --spool-reports must be "
                     "positive, --figures some of 1,2,3,4")

    common.stop_on_sigterm()
    sys.path.insert(0, common.REPO)  # rabbitnode.py; the workers never see it
    from rabbitnode import RabbitCluster

    ensure_venv("pika")
    identity = ours_identity()
    loads = [os.getloadavg()[0]]
    results, info = {}, None
    with common.revision_snapshot(args.baseline) as (before, baseline, before_identity), \
            ours_snapshots() as (snapshot, _):
        same = common.same_source(snapshot, before)
        folders = {"this tree": snapshot, "before": before}
        if "1" in figures:
            print(f"figure 1: a {seconds:g} s outage, intervals "
                  f"{' and '.join(f'{i:g}' for i in INTERVALS)} s, both revisions side by "
                  "side ...", file=sys.stderr)
            results["outage"] = figure_outage(folders, seconds)
        if figures & {"2", "3"}:
            print("starting a private 3-node RabbitMQ cluster ...", file=sys.stderr)
            cluster = RabbitCluster(name="pihace-faults")
            try:
                cluster.start()
                info = common.run_worker(__file__, "info", {"url": cluster.urls[0]},
                                         common.env_for())
                _amqp(cluster.urls[0], op="declare", queues=[NACK_QUEUE, FLEET_QUEUE])
                if "2" in figures:
                    print(f"figure 2: {trials} kill(s) -9 of the leader per revision ...",
                          file=sys.stderr)
                    results["nack"] = figure_nack(cluster, folders, trials, cap, args.every)
                if "3" in figures:
                    print(f"figure 3: {args.pushers} pushers, n1 stopped and started again ...",
                          file=sys.stderr)
                    results["fleet"] = figure_fleet(cluster, folders, args.pushers, args.age)
            finally:
                cluster.close()
        if "4" in figures:
            print("figure 4: SIGKILL during an outage, then the spool ...", file=sys.stderr)
            results["spool"] = figure_spool(folders, args.spool_reports)
    loads.append(os.getloadavg()[0])
    import platform

    versions = f"{platform.python_implementation()} {platform.python_version()}"
    if info is not None:
        versions = f"{info['python']}, pika {info['pika']}, {info['broker']}"
    header = [f"issue #11 under faults: pihace.py ({common.REPO}) vs before, each in its own "
              "subprocesses",
              f"pihace.py (this tree): {identity_after(identity)}",
              f"pihace.py before:      {before_identity}",
              f"machine: {machine(versions)}; load average {loads[0]:.2f} before, "
              f"{loads[1]:.2f} after"]
    notes = []
    if same:
        notes.append("this tree's pihace.py is the same file as before's: their columns "
                     "measure the same code")
    notes.append(common.load_note(loads))
    print_table(results, (seconds, trials, cap, args.every, args.pushers, args.age, baseline),
                header, notes)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the workers, the cluster and the node are gone by now
        sys.exit("interrupted")
