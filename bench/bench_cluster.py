#!/usr/bin/env python3
"""2,000 real pushers on a 3-node RabbitMQ cluster, a watcher reading them, the queue's leader
killed (issue 29, part 2).

    python3 bench/bench_cluster.py                  # 2,000 pushers, interval 60: about 7 minutes
    python3 bench/bench_cluster.py --quick          # 300 pushers, interval 20: about 3 minutes
    python3 bench/bench_cluster.py --pushers 1000 --processes 4 --down 90

A private 3-node cluster is started with rabbitnode.RabbitCluster (every node inherits this
process's file-descriptor limit, raised to its hard limit first). Then, all from a snapshot of
this tree's pihace.py taken at start:

  the watcher   pihace.py watch --url N1 --url N2 --url N3 --queue pihace.healthcheck
                --queue-arg x-queue-type=quorum --listen 127.0.0.1:PORT --state DIR/state.json
                (it declares the quorum queue); its change lines are read as they come
  the pushers   --processes worker processes (this Python, PYTHONPATH=the snapshot), each with
                its share of --pushers AMQPPusher(hc, [N1, N2, N3], "pihace.healthcheck",
                queue_arguments={"x-queue-type": "quorum"}, heartbeat=60,
                max_connection_age=--age), each in a thread of its own running
                push_forever_in_loop(interval=--interval). Pusher g of the fleet starts at
                g / pushers of an interval after the common start: reports evenly spaced.
                hc is a HealthCheck named d00000 ... with one check that passes.

The run: 20 s of the cluster's CPU with the watcher alone; ramp-up (one interval: every pusher
connects and reports), a settle of 5 s, the steady window (one interval): the workers' CPU
(utime + stime, /proc) and RSS against their RSS with pihace imported and no pusher yet; each
node's beam.smp RSS and CPU, `rabbit_vm:memory()` (what `rabbitmq-diagnostics memory_breakdown`
shows) and Erlang process count against the same before any pusher; confirmed reports per
second. Then
`kill -9` of the node holding the queue's leader (rabbitnode kills beam.smp and its helpers),
down for --down seconds, started again; connections per node every 5 s until
--age + interval + 30 s after it is back. Then every pusher is stopped (its last word, the
"stopped" report, goes out) and the watcher is read once it has applied them all.

Measured per pusher by the worker, without changing pihace: each message it puts in its outbox
(time taken) and each confirmed one (time the outbox let it go: `Outbox.add` and
`Outbox.settle` wrapped on the instance). Its delivery delay is confirmed - taken:
  every device delivering again within 5 s:  every report taken while the node is down
      confirmed within 5 s of being taken (and none left unconfirmed)
  0 confirmed reports lost:  for every device, the watcher's distinct reports (it drops
      duplicates by message id) equal the messages the pusher had confirmed at the end
  no device late that was delivering:  no change line to late or silent in the whole run
  connections within +-20 % per node after the node returns:  how long after it answers
      AMQP again every node holds within 20 % of pushers / 3

Workers run in sessions of their own; Ctrl-C, SIGTERM or an error kills them, the watcher and
the cluster. Wrap a run in `flock /tmp/pihace-bench.lock` on a shared machine.
"""

import argparse
import http.client
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time

import common
from common import REPO, identity_after, ours_identity, ours_snapshots, print_rows

QUEUE = "pihace.healthcheck"
QUORUM = {"x-queue-type": "quorum"}
HEARTBEAT = 60
SETTLE = 5.0
TARGET_DELAY = 5.0  # seconds from a report taken to its confirm, while the node is down
SPREAD = 0.20  # connections per node within this share of an even split
IDLE = 20.0  # seconds of the cluster's CPU measured with the watcher alone


# ---------------------------------------------------------------------------
# the worker: many pushers in one process
# ---------------------------------------------------------------------------

def _rss_kb():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def work_pushers(options):
    """Holds its share of the fleet; "stop" on stdin stops them and writes the records."""
    channel = os.fdopen(os.dup(1), "w", buffering=1)  # the parent reads only this
    os.dup2(2, 1)
    import logging

    import pihace

    logging.basicConfig(level=logging.WARNING, filename=options["log"],
                        format="%(created).3f %(threadName)s %(message)s")
    rss_imported = _rss_kb()
    urls, interval, total = options["urls"], options["interval"], options["total"]
    t0 = options["t0"]
    pushers, records = [], []

    for g in options["devices"]:
        hc = pihace.HealthCheck(name=f"d{g:05d}", version="1")
        hc.register("ok", lambda: True)
        pusher = pihace.AMQPPusher(hc, urls, QUEUE, queue_arguments=QUORUM,
                                   heartbeat=HEARTBEAT, max_connection_age=options["age"],
                                   connection_name=f"bench d{g:05d}")
        record = {}  # message id -> [taken, confirmed or None]
        outbox = pusher.outbox

        def add(message, waited_for=False, _add=outbox.add, _record=record):
            _record[message.message_id] = [time.time(), None]
            return _add(message, waited_for)

        def settle(message, reason=None, _settle=outbox.settle, _record=record):
            _settle(message, reason)
            entry = _record.get(message.message_id)
            if reason is None and entry is not None and entry[1] is None:
                entry[1] = time.time()

        outbox.add, outbox.settle = add, settle
        pushers.append(pusher)
        records.append(record)
    rss_built = _rss_kb()

    def run(g, pusher):
        start = t0 + g / total * interval
        time.sleep(max(0.0, start - time.time()))  # its phase in the interval, not a sync
        pusher.push_forever_in_loop(interval=interval)

    threads = [threading.Thread(target=run, args=(g, pusher), daemon=True)
               for g, pusher in zip(options["devices"], pushers)]
    for thread in threads:
        thread.start()
    channel.write(json.dumps({"ready": True, "rss_imported_kb": rss_imported,
                              "rss_built_kb": rss_built}) + "\n")
    if sys.stdin.readline().strip() != "stop":
        os._exit(3)
    stopped = time.time()
    for pusher in pushers:
        pusher.stop()
    for thread in threads:
        thread.join(max(0.0, stopped + 30 - time.time()))
    out = [{"device": f"d{g:05d}@{pihace._HOST}", "reports": list(record.values()),
            "connections": pusher.connections_opened, "left": len(pusher.outbox),
            "alive": thread.is_alive()}
           for g, pusher, record, thread in zip(options["devices"], pushers, records, threads)]
    with open(options["out"], "w") as file:
        json.dump(out, file)
    channel.write(json.dumps({"stopped": True}) + "\n")
    channel.close()
    os._exit(0)


# ---------------------------------------------------------------------------
# the parent
# ---------------------------------------------------------------------------

def proc_cpu(pid):
    """utime + stime of `pid`, in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def beam_pid(node):
    """The pid of a node's beam.smp (a descendant of its rabbitmq-server script)."""
    import rabbitnode

    for pid, _ in rabbitnode._descendants(node.pid):
        try:
            with open(f"/proc/{pid}/comm") as comm:
                if comm.read().strip().startswith("beam"):
                    return pid
        except OSError:
            pass
    return None


def memory_breakdown(node):
    """{category: bytes} of `rabbit_vm:memory()` (what `rabbitmq-diagnostics memory_breakdown`
    shows); "erlang" is the total the VM allocated."""
    import re

    out = node.ctl("eval", "rabbit_vm:memory().", timeout=60)
    values = {key: int(value) for key, value in re.findall(r"\{(\w+),(\d+)\}", out)}
    count = node.ctl("eval", "erlang:system_info(process_count).", timeout=60).strip()
    values["erlang_processes"] = int(count) if count.isdigit() else 0
    return values


CONNECTION_KEYS = ("connection_readers", "connection_writers", "connection_channels",
                   "connection_other")


def get_json(port, path, timeout=30):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        return json.loads(connection.getresponse().read())
    finally:
        connection.close()


class Watch:
    """`pihace.py watch` in a session of its own; its change lines, stamped as they come."""

    def __init__(self, snapshot, urls, folder, port):
        self.stderr = open(os.path.join(folder, "watch.stderr"), "w+")
        self.argv = [sys.executable, os.path.join(snapshot, "pihace.py"), "watch",
                     *(word for url in urls for word in ("--url", url)), "--queue", QUEUE,
                     "--queue-arg", "x-queue-type=quorum", "--listen", f"127.0.0.1:{port}",
                     "--state", os.path.join(folder, "state.json")]
        self.port = port
        self.process = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=self.stderr,
                                        env=common.env_for(), cwd=folder,
                                        start_new_session=True)
        self.pid, self.lines = self.process.pid, []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append((time.time(), line.decode(errors="replace").rstrip("\n")))

    def changes(self):
        """[(arrival, device, old, new)]"""
        found = []
        for arrival, line in self.lines:
            words = line.split()
            if len(words) >= 5 and words[3] == "->":
                found.append((arrival, words[1], words[2], words[4]))
        return found

    def devices(self):
        return get_json(self.port, "/devices?limit=10000")

    def get_light(self):
        """/devices with one device: the watcher's status and the counts of states."""
        return get_json(self.port, "/devices?limit=1")

    def wait_connected(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"pihace watch exited:\n{self.error()}")
            try:
                if self.devices()["watcher"]["connected"]:
                    return
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.3)
        raise SystemExit(f"pihace watch did not connect in time:\n{self.error()}")

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


class Sight:
    """The watcher's /devices every second: connected or not, applied reports, states."""

    def __init__(self, watch):
        self.watch, self.samples = watch, []  # (time, connected, applied, counts)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.done.wait(1.0):
            try:
                document = self.watch.get_light()
            except (OSError, ValueError, KeyError):
                continue
            status = document["watcher"]
            self.samples.append((time.time(), status["connected"],
                                 status["counts"].get("applied", 0), document["counts"]))

    def stop(self):
        self.done.set()
        self.thread.join(10)


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def quantile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] if values else None


def run(args, snapshot, folder, log):
    sys.path.insert(0, REPO)
    import rabbitnode

    fd_limit = raise_fd_limit()
    cluster = rabbitnode.RabbitCluster(name="pihace-bc")
    workers, watch, sight = [], None, None
    facts = {"fd_limit": fd_limit}
    try:
        log("starting a 3-node cluster ...")
        cluster.start()
        facts["cluster_start"] = cluster.startup_seconds
        urls = cluster.urls
        port = rabbitnode.free_port()
        watch = Watch(snapshot, urls, folder, port)
        watch.wait_connected()
        leader = cluster.wait_quorum_leader(QUEUE)
        beams = {node: beam_pid(node) for node in cluster.nodes}
        facts["broker_before"] = {node.nodename: (proc_rss_mb(beams[node]),
                                                  memory_breakdown(node))
                                  for node in cluster.nodes}
        log(f"the cluster's CPU with the watcher alone ({IDLE:g} s) ...")
        idle0, started = sum(proc_cpu(pid) for pid in beams.values()), time.time()
        time.sleep(IDLE)
        facts["beam_idle_cpu"] = ((sum(proc_cpu(pid) for pid in beams.values()) - idle0)
                                  / (time.time() - started))
        n, per = args.pushers, args.pushers // args.processes
        t0 = time.time() + 3.0 + 0.004 * n  # the workers' imports and constructors first
        for w in range(args.processes):
            devices = list(range(w, n, args.processes))
            options = {"urls": urls, "interval": args.interval, "total": n, "t0": t0,
                       "devices": devices, "age": args.age,
                       "out": os.path.join(folder, f"worker{w}.json"),
                       "log": os.path.join(folder, f"worker{w}.log")}
            env = common.env_for(snapshot)
            workers.append(common.WorkerProcess(
                [sys.executable, os.path.abspath(__file__), "--worker", "pushers",
                 json.dumps(options)], env, no_answer=f"worker {w} gave no answer"))
        rss_imported, rss_built = 0.0, 0.0
        for worker in workers:
            answer = worker.receive(120, "starting its pushers")
            rss_imported += answer["rss_imported_kb"] / 1024
            rss_built += answer["rss_built_kb"] / 1024
        facts.update(rss_imported=rss_imported, rss_built=rss_built, per_process=per)
        sight = Sight(watch)
        log(f"{n:,} pushers in {args.processes} processes, ramping up over one interval "
            f"({args.interval:g} s) ...")
        window_start = t0 + args.interval + SETTLE
        time.sleep(max(0.0, window_start - time.time()))
        cpu0 = {w.pid: proc_cpu(w.pid) for w in workers}
        beam_cpu0 = {node: proc_cpu(beams[node]) for node in cluster.nodes}
        applied0 = watch.get_light()["watcher"]["counts"].get("applied", 0)
        facts["connections_ramped"] = {node.nodename: count for node, count in
                                       cluster.connections_per_node().items()}
        log(f"steady window ({args.interval:g} s) ...")
        time.sleep(max(0.0, window_start + args.interval - time.time()))
        window_end = time.time()
        cpu1 = {w.pid: proc_cpu(w.pid) for w in workers}
        beam_cpu1 = {node: proc_cpu(beams[node]) for node in cluster.nodes}
        applied1 = watch.get_light()["watcher"]["counts"].get("applied", 0)
        facts.update(
            window=(window_start, window_end),
            client_cpu=sum(cpu1[p] - cpu0[p] for p in cpu1),
            beam_cpu={node.nodename: beam_cpu1[node] - beam_cpu0[node] for node in cluster.nodes},
            client_rss=sum(proc_rss_mb(w.pid) for w in workers),
            watcher_applied=applied1 - applied0,
            watcher_rss=proc_rss_mb(watch.pid),
            broker_after={node.nodename: (proc_rss_mb(beams[node]), memory_breakdown(node))
                          for node in cluster.nodes},
            fds=sum(len(os.listdir(f"/proc/{w.pid}/fd")) for w in workers),
            beam_fds={node.nodename: len(os.listdir(f"/proc/{beams[node]}/fd"))
                      for node in cluster.nodes})
        facts["connections_before"] = {node.nodename: count for node, count in
                                       cluster.connections_per_node().items()}
        leader = cluster.wait_quorum_leader(QUEUE)
        facts["leader"] = leader.nodename
        log(f"kill -9 of {leader.nodename}, the queue's leader; down for {args.down:g} s ...")
        killed = time.time()
        cluster.kill(leader)
        facts["killed"] = killed
        new_leader = cluster.wait_quorum_leader(QUEUE, other_than=leader, timeout=60)
        facts["new_leader"] = (new_leader.nodename, time.time() - killed)
        time.sleep(max(0.0, killed + args.down - time.time()))
        facts["connections_down"] = {node.nodename: count for node, count in
                                     cluster.connections_per_node().items()}
        log("starting it again ...")
        restarting = time.time()
        leader.start()
        back = time.time()
        cluster.wait_running()
        facts.update(restarting=restarting, back=back)
        log("watching connections per node ...")
        until = back + args.age + args.interval + 30
        even, spread = None, []
        while time.time() < until:
            counts = cluster.connections_per_node()
            now = time.time()
            values = [counts[node] for node in cluster.nodes]
            spread.append((now - back, values))
            share = n / len(cluster.nodes)
            if even is None and all(abs(v - share) <= SPREAD * share for v in values):
                even = now - back
                if not args.full_rebalance_wait:
                    break
            time.sleep(max(0.0, now + 5 - time.time()))
        facts.update(even=even, spread=spread)
        log("stopping the pushers ...")
        stop_at = facts["stop_at"] = time.time()
        for worker in workers:
            worker.send("stop")
        for worker in workers:
            worker.receive(120, "stopping its pushers")
        facts["stopped"] = time.time() - stop_at
        records = []
        for w in range(args.processes):
            with open(os.path.join(folder, f"worker{w}.json")) as file:
                records.extend(json.load(file))
        confirmed = sum(1 for r in records for taken, at in r["reports"] if at is not None)
        deadline = time.monotonic() + 60
        while True:
            document = watch.devices()
            seen = sum(device["reports"] for device in document["devices"])
            if seen >= confirmed or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        facts["watcher_devices"] = {d["device"]: d for d in document["devices"]}
        facts["watcher_status"] = document["watcher"]
        facts["records"] = records
        facts["warnings"] = []
        for w in range(args.processes):
            with open(os.path.join(folder, f"worker{w}.log"), errors="replace") as file:
                facts["warnings"].extend(line.rstrip("\n") for line in file)
        sight.stop()
        facts["sight"] = sight.samples
        facts["changes"] = watch.changes()
        facts["watch_argv"] = watch.argv
        facts["watch_stderr"] = watch.error()
    finally:
        if sight is not None:
            sight.stop()
        for worker in workers:
            worker.kill()
        if watch is not None:
            watch.stop()
        cluster.close()
    return facts


def report(args, facts, header):
    n = args.pushers
    records = facts["records"]
    killed, back = facts["killed"], facts["back"]
    window_start, window_end = facts["window"]
    window = window_end - window_start
    reports = [(r["device"], taken, at) for r in records for taken, at in r["reports"]]
    in_window = sum(1 for _, _, at in reports if at is not None and window_start <= at < window_end)
    during = [(device, taken, at) for device, taken, at in reports if killed <= taken < back]
    delays = [at - taken for _, taken, at in during if at is not None]
    unconfirmed_during = sum(1 for _, _, at in during if at is None)
    late_devices = {device for device, taken, at in during
                    if at is None or at - taken > TARGET_DELAY}
    # the whole run up to the stop (then every pusher's last word goes out at once)
    all_delays = [at - taken for _, taken, at in reports
                  if at is not None and taken < facts["stop_at"]]
    # longest gap between a device's confirms across the kill
    gaps = []
    for r in records:
        confirms = sorted(at for _, at in r["reports"] if at is not None)
        around = [b - a for a, b in zip(confirms, confirms[1:]) if b >= killed and a <= back]
        if around:
            gaps.append(max(around))
    watched = facts["watcher_devices"]
    lost, extra = [], []
    for r in records:
        confirmed = sum(1 for _, at in r["reports"] if at is not None)
        seen = watched.get(r["device"], {}).get("reports", 0)
        if seen < confirmed:
            lost.append((r["device"], confirmed, seen))
        elif seen > confirmed:
            extra.append((r["device"], confirmed, seen))
    confirmed_total = sum(1 for _, _, at in reports if at is not None)
    left = sum(r["left"] for r in records)
    false_alarms = [c for c in facts["changes"] if c[3] in ("late", "silent", "down")]
    before_mem = facts["broker_before"]
    after_mem = facts["broker_after"]
    beam_rss_delta = sum(after_mem[k][0] - before_mem[k][0] for k in after_mem)
    conn_bytes = sum(sum(after_mem[k][1].get(c, 0) for c in CONNECTION_KEYS)
                     - sum(before_mem[k][1].get(c, 0) for c in CONNECTION_KEYS)
                     for k in after_mem)
    client_rss_delta = facts["client_rss"] - facts["rss_imported"]
    processes = sum(after_mem[k][1].get("erlang_processes", 0)
                    - before_mem[k][1].get("erlang_processes", 0) for k in after_mem)
    cpu_per_pusher_s = facts["client_cpu"] / n / window  # seconds of CPU per second
    blind = [s for s in facts["sight"] if not s[1]]
    blind_span = (blind[-1][0] - blind[0][0] + 1) if blind else 0.0
    d50, d99, dmax = (quantile(delays, 0.5), quantile(delays, 0.99), max(delays, default=None))
    a99, amax = quantile(all_delays, 0.99), max(all_delays, default=None)
    beam_cpu = sum(facts["beam_cpu"].values()) / window * 100

    def verdict(met):
        return "met" if met else "MISSED"

    def ms(value):
        return common.fmt(None if value is None else value * 1000, 1)

    down_node = facts["leader"]
    rows = [("figure", "value", "target", "")]
    rows += [
        ("pushers (connections) / worker processes / per process",
         f"{n:,} / {args.processes} / {facts['per_process']}", "2,000", verdict(n >= 2000)),
        ("connections per node after the ramp-up",
         " / ".join(str(v) for v in facts["connections_before"].values()), "", ""),
        ("confirmed reports per second, steady window", f"{in_window / window:.1f}",
         f"{n / args.interval:.1f}", verdict(in_window / window >= 0.95 * n / args.interval)),
        ("  applied by the watcher per second", f"{facts['watcher_applied'] / window:.1f}", "",
         ""),
        ("client CPU per pusher, % of one core", f"{cpu_per_pusher_s * 100:.4f}", "", ""),
        ("  per pusher per report (interval), ms", f"{cpu_per_pusher_s * args.interval * 1000:.2f}",
         "", ""),
        ("  all workers, % of one core", f"{facts['client_cpu'] / window * 100:.1f}", "", ""),
        ("client RSS per pusher (connected, thread), KB",
         f"{client_rss_delta * 1024 / n:.0f}", "", ""),
        ("  of it before connecting (objects only), KB",
         f"{(facts['rss_built'] - facts['rss_imported']) * 1024 / n:.0f}", "", ""),
        ("  file descriptors per pusher", f"{facts['fds'] / n:.2f}", "", ""),
        ("broker memory per connection: beam.smp RSS, KB", f"{beam_rss_delta * 1024 / n:.0f}",
         "", ""),
        ("  rabbit_vm:memory() connection_*, KB", f"{conn_bytes / 1024 / n:.0f}", "", ""),
        ("  Erlang processes per connection", f"{processes / n:.1f}", "", ""),
        ("  broker CPU (3 nodes), % of one core", f"{beam_cpu:.1f}", "", ""),
        ("    with the watcher alone, before any pusher, %",
         f"{facts['beam_idle_cpu'] * 100:.1f}", "", ""),
        ("  beam.smp file descriptors per node",
         " / ".join(str(v) for v in facts["beam_fds"].values()), "", ""),
        ("kill -9 of the leader's node: new leader after, s",
         f"{facts['new_leader'][1]:.1f}", "", ""),
        ("reports taken while it is down / unconfirmed", f"{len(during):,} / {unconfirmed_during}",
         "", ""),
        ("  taken -> confirmed: p50 / p99 / max, ms", f"{ms(d50)} / {ms(d99)} / {ms(dmax)}",
         f"max <= {TARGET_DELAY * 1000:.0f}",
         verdict(dmax is not None and dmax <= TARGET_DELAY and not unconfirmed_during)),
        ("  devices with one over 5 s (or unconfirmed)", f"{len(late_devices)}", "0",
         verdict(not late_devices)),
        ("  longest gap between a device's confirms around it, s",
         f"{max(gaps, default=0):.1f}", f"<= {args.interval + TARGET_DELAY:g}",
         verdict(max(gaps, default=0) <= args.interval + TARGET_DELAY)),
        ("whole run until the stop, taken -> confirmed: p99 / max, ms",
         f"{ms(a99)} / {ms(amax)}", "", ""),
        ("confirmed reports / lost (watcher saw fewer) / devices short",
         f"{confirmed_total:,} / {sum(c - s for _, c, s in lost)} / {len(lost)}", "0 lost",
         verdict(not lost)),
        ("  left unconfirmed at the end / watcher saw more than confirmed",
         f"{left} / {len(extra)}", "", ""),
        ("watcher change lines to late, silent or down", f"{len(false_alarms)}", "0",
         verdict(not false_alarms)),
        ("  its view stale (not connected), s", f"{blind_span:.0f}", "", ""),
        ("connections per node while it is down",
         " / ".join(str(v) for v in facts["connections_down"].values()), "", ""),
        (f"after it is back: every node within +-{SPREAD * 100:.0f} %, s",
         "never" if facts["even"] is None else f"{facts['even']:.0f}",
         f"<= {args.age + args.interval:g}",
         verdict(facts["even"] is not None and facts["even"] <= args.age + args.interval)),
    ]
    print()
    for line in header:
        print(line)
    print()
    print_rows(rows, right=(1,))
    print()
    names = list(facts["connections_before"])
    print(f"- Nodes: {', '.join(names)}; killed: {down_node} (the leader of {QUEUE}), "
          f"down {args.down:g} s, then started again ({facts['back'] - facts['restarting']:.0f} s "
          f"to answer AMQP); new leader {facts['new_leader'][0]}. Cluster started in "
          f"{facts['cluster_start']:.0f} s; file-descriptor limit {facts['fd_limit']:,}.")
    print(f"- Pushers: interval {args.interval:g} s, heartbeat {HEARTBEAT} s, "
          f"max_connection_age {args.age:g} s, confirms on, 3 URLs each; one thread each. "
          f"Worker RSS: {facts['rss_imported']:.0f} MB with pihace imported, "
          f"{facts['rss_built']:.0f} MB with the pushers built, {facts['client_rss']:.0f} MB "
          "in the window (all workers).")
    print("- Broker memory (beam.smp RSS, MB) before / in the window: " + ", ".join(
        f"{before_mem[k][0]:.0f} / {after_mem[k][0]:.0f}" for k in after_mem)
        + f". Watcher RSS {facts['watcher_rss']:.0f} MB.")
    print("- Connections per node after the node came back (s after: n1 / n2 / n3): "
          + "; ".join(f"{t:.0f}: {' / '.join(map(str, v))}" for t, v in facts["spread"]))
    print(f"- Connections opened by the pushers in all: "
          f"{sum(r['connections'] for r in records):,}. "
          f"Stopping every pusher took {facts['stopped']:.1f} s. Watcher: "
          f"{facts['watcher_status']['counts']}.")
    kinds = {}
    for line in facts["warnings"]:
        words = line.split(" ", 2)
        if len(words) == 3 and words[0].replace(".", "").isdigit():
            when, text = float(words[0]), words[2]
            key = text.split(":")[0][:70] + ("" if ":" not in text else ": " + text.split(
                ":", 1)[1].strip()[:50])
            kinds.setdefault(key, []).append(when - killed)
    for key, whens in sorted(kinds.items(), key=lambda item: -len(item[1]))[:8]:
        print(f"- Pushers' log: {len(whens):,} x \"{key}\" ({min(whens):+.1f} .. "
              f"{max(whens):+.1f} s from the kill)")
    if false_alarms:
        print("- Change lines (first 5): " + "; ".join(
            f"{d} {o}->{w} at {t - killed:+.1f} s" for t, d, o, w in false_alarms[:5]))
    if lost:
        print("- Short (first 5): " + ", ".join(f"{d} confirmed {c} seen {s}"
                                               for d, c, s in lost[:5]))
    slow = sorted(((at - taken, device, taken - killed) for device, taken, at in during
                   if at is not None and at - taken > TARGET_DELAY), reverse=True)
    if slow:
        print(f"- Over {TARGET_DELAY:g} s (first 5 of {len(slow)}): " + ", ".join(
            f"{device} {delay:.1f} s (taken at {at:+.1f} s)" for delay, device, at in slow[:5]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="300 pushers, interval 20, down 30 s, age 50")
    parser.add_argument("--pushers", type=int, help="pushers in all (2,000)")
    parser.add_argument("--processes", type=int, help="worker processes (8)")
    parser.add_argument("--interval", type=float, help="seconds between reports (60)")
    parser.add_argument("--down", type=float, help="seconds the killed node stays down (75)")
    parser.add_argument("--age", type=float, help="the pushers' max_connection_age (150: "
                        "no connection is replaced before the steady window ends)")
    parser.add_argument("--full-rebalance-wait", action="store_true",
                        help="watch connections until the end, even once they are even")
    parser.add_argument("--keep", metavar="DIR", help="copy the run's raw facts to DIR")
    parser.add_argument("--worker", nargs=2, metavar=("NAME", "JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        work_pushers(json.loads(args.worker[1]))
        return 0
    quick = args.quick
    args.pushers = args.pushers or (300 if quick else 2000)
    args.processes = args.processes or (3 if quick else 8)
    args.interval = args.interval or (20.0 if quick else 60.0)
    args.down = args.down or (30.0 if quick else 75.0)
    args.age = args.age or (50.0 if quick else 150.0)
    common.stop_on_sigterm()
    identity = ours_identity()
    loads = [os.getloadavg()]
    started = time.monotonic()

    def log(text):
        print(f"{time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)

    with ours_snapshots() as (snapshot, _), tempfile.TemporaryDirectory() as folder:
        facts = run(args, snapshot, folder, log)
        loads.append(os.getloadavg())
        if args.keep:
            os.makedirs(args.keep, exist_ok=True)
            with open(os.path.join(args.keep, "facts.json"), "w") as out:
                json.dump(facts, out, default=str)
    commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    header = [f"{args.pushers:,} pushers on a 3-node RabbitMQ cluster ({REPO}, HEAD {commit}), "
              f"one run, {time.monotonic() - started:.0f} s",
              f"pihace.py: {identity_after(identity)}",
              common.machine_and_loads(loads),
              "broker: RabbitMQ " + _rabbit_version() + ", 3 private nodes on this machine, "
              "sharing its CPUs with the pushers and the watcher"]
    report(args, facts, header)
    common.print_load_note(loads)
    return 0


def _rabbit_version():
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "rabbitmq-server"],
                             capture_output=True, text=True).stdout.strip()
    except OSError:
        out = ""
    return out or "?"


if __name__ == "__main__":
    sys.exit(main())
