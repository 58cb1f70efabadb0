"""Reproduce issue 11 item 8: pushers stuck on Basic.Nack after a quorum queue leader's kill -9.

    python3 bench/reproduce_nack.py                   # 3 trials, about 3 minutes
    python3 bench/reproduce_nack.py --trials 1 --down 20 --pihace /work/main

Starts a private 3-node cluster (rabbitnode.RabbitCluster), declares the quorum queue `q`, finds
the node X holding its leader and, in each trial:

* pusher A (pihace AMQPPusher, amqp_url=[X, Y, Z], queue_arguments x-queue-type=quorum) pushes
  once through X; then X is killed with SIGKILL (its whole Erlang family);
* A pushes every --every seconds (0.1) from the kill on, in its own thread;
* pika P: a connection to Y opened --pika-delay seconds after the kill, publishing with confirms
  every --every seconds on one channel; at --fresh-at seconds it closes that channel and opens
  a new one on the same connection (pika P2 in the timeline);
* pusher B: a new pihace pusher ([X, Y, Z]) created --fresh-at seconds after the kill;
* pushers L<s>: new pihace pushers whose first push is s seconds after the kill, for each s
  in --late (where the window of getting stuck ends);
* after --down seconds X is started again; the clients go on until A is acked again (bounded).

Each client's outcomes are printed as runs: "from..to s: outcome xN" (times since the kill).
pihace.py is loaded from --pihace (default: this checkout; /work/main for the working copy) by path;
its sha256 is printed.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import rabbitnode  # noqa: E402


def load_pihace(folder):
    path = os.path.join(folder, "pihace.py")
    spec = importlib.util.spec_from_file_location("pihace", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["pihace"] = module
    spec.loader.exec_module(module)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    return module, f"{path} sha256:{digest}"


class Timeline:
    """(seconds since the kill, client, outcome) events, thread-safe."""

    def __init__(self):
        self.t0 = None
        self.events = []
        self.lock = threading.Lock()

    def now(self):
        return time.monotonic() - self.t0

    def add(self, client, outcome, duration=None):
        with self.lock:
            self.events.append((self.now(), client, outcome, duration))

    def runs(self, client):
        """[(first t, last t, outcome, count, max duration)] of consecutive equal outcomes."""
        runs = []
        for t, who, outcome, duration in self.events:
            if who != client:
                continue
            if runs and runs[-1][2] == outcome:
                first, _, _, count, longest = runs[-1]
                runs[-1] = (first, t, outcome, count + 1, max(longest, duration or 0))
            else:
                runs.append((t, t, outcome, 1, duration or 0))
        return runs

    def first(self, client, predicate, after=0.0):
        for t, who, outcome, _ in self.events:
            if who == client and t >= after and predicate(outcome):
                return t
        return None


def short(result, node_of_port=None, port=None):
    """An outcome as a short label: ack, nack, or the reason's gist."""
    if result is True:
        label = "ack"
    else:
        reason = result[1] if isinstance(result, tuple) else str(result)
        low = reason.lower()
        if "nack" in low:
            label = "nack"
        elif "refused" in low:
            label = "refused"
        elif "timed out" in low or "timeout" in low or "no confirm" in low:
            label = "timeout"
        else:
            label = reason[:90]
    if node_of_port is not None and port in node_of_port:
        label += f" via {node_of_port[port]}"
    return label


def every(period, stop, step):
    """Call step() every `period` s until stop is set; step returns True when acked."""
    next_at = time.monotonic()
    while not stop.is_set():
        step()
        next_at += period
        delay = next_at - time.monotonic()
        if delay > 0:
            stop.wait(delay)
        else:
            next_at = time.monotonic()


def trial(number, cluster, pihace, args):
    tl = Timeline()
    lates = [float(late) for late in args.late.split(",") if late]
    names = {node: f"n{i + 1}" for i, node in enumerate(cluster.nodes)}
    node_of_port = {node.port: names[node] for node in cluster.nodes}
    cluster.ensure_running()
    leader = None
    deadline = time.monotonic() + 60
    while leader is None and time.monotonic() < deadline:
        leader = cluster.quorum_leader("q")
    X = leader
    Y, Z = [node for node in cluster.nodes if node is not X]
    urls = [X.url, Y.url, Z.url]
    print(f"\n=== trial {number}: leader X={names[X]} (port {X.port}); "
          f"Y={names[Y]} Z={names[Z]}", flush=True)

    def make_pusher(name):
        hc = pihace.HealthCheck(name=name)
        hc.register("ok", lambda: True)
        return pihace.AMQPPusher(hc, urls, queue_name="q", connection_name=name,
                                 queue_arguments={"x-queue-type": "quorum"},
                                 timeout=args.timeout)

    for _ in range(50):  # a pihace that starts at a random URL (item 9) may need a few tries
        A = make_pusher("A")
        first = A.push()
        assert first is True, first
        if A.parameters.port == X.port:
            break
        A.close()
    else:
        raise SystemExit(f"pusher A never connected to X ({names[X]}) in 50 tries")

    stop = threading.Event()
    x_back = threading.Event()
    done = {"A": threading.Event()}

    def pusher_step(name, pusher):
        started = time.monotonic()
        result = pusher.push()
        label = short(result, node_of_port, pusher.parameters.port)
        tl.add(name, label, time.monotonic() - started)
        if x_back.is_set() and result is True:
            done.setdefault(name, threading.Event()).set()

    def run_pusher(name, pusher, start_at):
        stop.wait(max(0.0, start_at - tl.now()))
        if stop.is_set():
            return
        every(args.every, stop, lambda: pusher_step(name, pusher))
        pusher.close()

    def run_pika(start_at):
        import pika
        import pika.exceptions as pe

        stop.wait(max(0.0, start_at - tl.now()))
        connection = None
        try:
            connection = pika.BlockingConnection(pika.URLParameters(Y.url))
            channel = connection.channel()
            channel.confirm_delivery()
            tl.add("pikaP", f"connected to {names[Y]}")
            name, reopened = "pikaP", False

            def step():
                nonlocal channel, name, reopened
                if not reopened and tl.now() >= args.fresh_at:
                    try:
                        channel.close()
                    except Exception:
                        pass
                    channel = connection.channel()
                    channel.confirm_delivery()
                    name, reopened = "pikaP2", True
                started = time.monotonic()
                try:
                    channel.basic_publish("", "q", b"{}", mandatory=True,
                                          properties=pika.BasicProperties(delivery_mode=2))
                    label = "ack"
                except pe.NackError:
                    label = "nack"
                except pe.UnroutableError:
                    label = "returned"
                except Exception as exc:  # channel or connection closed
                    label = f"{type(exc).__name__}: {exc}"[:90]
                    if not channel.is_open and connection.is_open:
                        channel = connection.channel()
                        channel.confirm_delivery()
                tl.add(name, label, time.monotonic() - started)
                connection.process_data_events(0)

            every(args.every, stop, step)
        except Exception as exc:
            tl.add("pikaP", f"{type(exc).__name__}: {exc}"[:90])
        finally:
            if connection is not None and connection.is_open:
                try:
                    connection.close()
                except Exception:
                    pass

    def run_leader():
        while not stop.is_set():
            try:
                node = cluster.quorum_leader("q")
                tl.add("leader", names.get(node, "none"))
            except Exception as exc:
                tl.add("leader", f"? {type(exc).__name__}")
            stop.wait(0.5)

    tl.t0 = time.monotonic()
    cluster.kill(X)
    kill_took = tl.now()

    def run_new_pusher(name, start_at):
        """A pusher created at start_at (after the kill), pushing from then on."""
        stop.wait(max(0.0, start_at - tl.now()))
        if not stop.is_set():
            run_pusher(name, make_pusher(name), start_at)

    threads = [
        threading.Thread(target=run_pusher, args=("A", A, 0.0)),
        threading.Thread(target=run_pika, args=(args.pika_delay,)),
        threading.Thread(target=run_new_pusher, args=("B", args.fresh_at)),
        threading.Thread(target=run_leader),
    ] + [threading.Thread(target=run_new_pusher, args=(f"L{late:g}", late)) for late in lates]
    for thread in threads:
        thread.daemon = True
        thread.start()

    stop.wait(max(0.0, args.down - tl.now()))
    restart_at = tl.now()
    cluster.restart(X)
    back_at = tl.now()
    x_back.set()
    tl.add("cluster", f"{names[X]} restarted")
    done["A"].wait(args.recover)
    stop.set()
    for thread in threads:
        thread.join(args.timeout + 10)

    print(f"kill -9 of X took {kill_took:.2f} s; X restarted at {restart_at:.1f} s, "
          f"running in the cluster again at {back_at:.1f} s")
    for client in ("leader", "A", "pikaP", "pikaP2", "B", *(f"L{late:g}" for late in lates)):
        runs = tl.runs(client)
        if not runs:
            continue
        print(f"  {client}:")
        for first_t, last_t, outcome, count, longest in runs:
            print(f"    {first_t:6.2f}..{last_t:6.2f} s  {outcome}  x{count}"
                  + (f"  (longest {longest:.2f} s)" if longest else ""))
    summary = {
        "A first nack": tl.first("A", lambda o: o.startswith("nack")),
        "A first ack": tl.first("A", lambda o: o.startswith("ack")),
        "A last nack": max((t for t, who, o, _ in tl.events if who == "A" and o.startswith("nack")),
                           default=None),
        "X start": restart_at,
        "X in cluster": back_at,
        "pikaP first nack": tl.first("pikaP", lambda o: o.startswith("nack")),
        "pikaP2 first ack": tl.first("pikaP2", lambda o: o.startswith("ack")),
        "B first ack": tl.first("B", lambda o: o.startswith("ack")),
        **{f"L{late:g} first ack": tl.first(f"L{late:g}", lambda o: o.startswith("ack"))
           for late in lates},
        "new leader": tl.first("leader", lambda o: o not in (names[X], "none")
                               and not o.startswith("?")),
    }
    print("  summary (s since the kill): " + ", ".join(
        f"{k}={'never' if v is None else f'{v:.2f}'}" for k, v in summary.items()), flush=True)
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pihace", default=REPO, help="folder holding pihace.py (default: this checkout)")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--every", type=float, default=0.1, help="seconds between pushes")
    parser.add_argument("--down", type=float, default=30.0, help="seconds X stays down")
    parser.add_argument("--recover", type=float, default=30.0,
                        help="seconds to wait for A's first ack once X is back")
    parser.add_argument("--fresh-at", type=float, default=10.0,
                        help="when the new pusher B and pika's new channel start")
    parser.add_argument("--late", default="0.2,0.4,0.6,0.8,1,1.5,2,3,5",
                        help="comma-separated seconds: a pusher L<s> created and pushing first "
                             "that long after the kill")
    parser.add_argument("--pika-delay", type=float, default=0.0)
    parser.add_argument("--timeout", type=float, default=10.0, help="the pushers' timeout")
    args = parser.parse_args(argv)

    pihace, identity = load_pihace(args.pihace)
    print(f"pihace: {identity}")
    started = time.monotonic()
    with rabbitnode.RabbitCluster() as cluster:
        print(f"cluster started in {time.monotonic() - started:.1f} s: "
              + ", ".join(f"n{i + 1}={n.nodename} port {n.port}" for i, n in enumerate(cluster.nodes)),
              flush=True)
        import pika

        connection = pika.BlockingConnection(pika.URLParameters(cluster.urls[0]))
        connection.channel().queue_declare("q", durable=True,
                                           arguments={"x-queue-type": "quorum"})
        connection.close()
        for number in range(1, args.trials + 1):
            trial(number, cluster, pihace, args)
            connection = pika.BlockingConnection(pika.URLParameters(cluster.running_node().url))
            connection.channel().queue_purge("q")
            connection.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
