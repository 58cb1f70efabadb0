#!/usr/bin/env python3
"""Benchmark: pihace.py's HealthServer against pihace 1.0.0's FastAPI WebProvider (uvicorn).

    python3 bench/bench_http.py            # 3 rounds of 5 s of load per server, about a minute
    python3 bench/bench_http.py --quick    # 1 round of 2 s

Each server runs in its own subprocess of bench/.venv-pihace100's interpreter with one pihace
on its path and one trivial checker (``lambda: True``, no system figures):

    pihace.py    HealthServer(hc, "127.0.0.1", port).serve_forever(), GET /health
                 (cache period 1 s, the default), from a snapshot of the repository's pihace.py
                 with its bytecode cached (as after pip install), psutil blocked
    1.0.0        pihace 1.0.0's WebProvider(hc, "127.0.0.1", port).serve(), GET /healthcheck
                 (uvicorn.run with its defaults: access log on, written to /dev/null here)

The load generator is this process (stdlib only): 50 keep-alive connections, each sending its
next request as soon as the previous answer is complete (Content-Length read), for a warm-up
second and then the measured window. Figures: requests per second, median and p99 latency,
the server's RSS after the load (VmRSS) and its peak (VmHWM). Then a burst: 200 connections
opened first, 200 requests sent at once; the checker counts its calls, and the highest count
seen in the answers is how many check runs the burst started. Peers alternate order every
round; each figure is the median over rounds, with its min..max.
"""

import argparse
import os
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import common
from common import (BENCH, VENV_PYTHON, ensure_venv, fmt, identity_after, in_order, machine,
                    ours_identity, ours_snapshots, print_rows)

PEERS = ("pihace.py", "pihace 1.0.0")
PATHS = {"pihace.py": "/health", "pihace 1.0.0": "/healthcheck"}
CLIENTS = 50
BURST = 200


# ---------------------------------------------------------------------------
# the servers: `python -c` programs of the venv's interpreter, importing nothing but what a
# user's program would (the benchmark's own modules would add to both servers' RSS)
# ---------------------------------------------------------------------------

_COUNTED = """\
import os, sys
calls = os.open(os.environ["PIHACE_BENCH_CALLS"], os.O_WRONLY | os.O_APPEND)
def counted():  # one byte per call: the parent reads the count from the file's size
    os.write(calls, b"x")
    return True
"""
SERVERS = {
    "pihace.py": _COUNTED + """\
sys.modules["psutil"] = None  # stdlib only, as a user of the single file runs it
import pihace
hc = pihace.HealthCheck(name="bench", version="1")
hc.register("counted", counted)
pihace.HealthServer(hc, "127.0.0.1", int(sys.argv[1])).serve_forever()
""",
    "pihace 1.0.0": _COUNTED + """\
from pihace.healthcheck import HealthCheck
from pihace.providers.web import WebProvider
hc = HealthCheck(name="bench", version="1")
hc.register("counted", counted)
WebProvider(hc, host="127.0.0.1", port=int(sys.argv[1])).serve()
""",
}


# ---------------------------------------------------------------------------
# the load generator: keep-alive connections driven by one selector
# ---------------------------------------------------------------------------

def _answers(buffer):
    """Complete answers at the start of `buffer`: ([(status, body)], the rest)."""
    done = []
    while True:
        head_end = buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return done, buffer
        head = buffer[:head_end].decode("latin-1").split("\r\n")
        length = next((int(line.split(":", 1)[1]) for line in head[1:]
                       if line.lower().startswith("content-length:")), None)
        if length is None:
            raise SystemExit(f"an answer without Content-Length: {head}")
        end = head_end + 4 + length
        if len(buffer) < end:
            return done, buffer
        done.append((int(head[0].split()[1]), buffer[head_end + 4:end]))
        buffer = buffer[end:]


def connect(port, count):
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        sockets.append(sock)
    return sockets


def load(port, path, warmup, window):
    """(requests per second, [latency in ms]) of CLIENTS keep-alive clients over `window` s."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    sockets = connect(port, CLIENTS)
    selector = selectors.DefaultSelector()
    state = {}
    start = time.perf_counter()
    for sock in sockets:
        selector.register(sock, selectors.EVENT_READ)
        sock.send(request)
        state[sock] = [b"", time.perf_counter()]
    measure_from, measure_to = start + warmup, start + warmup + window
    latencies, count, failures = [], 0, 0
    now = start
    while now < measure_to:
        for key, _ in selector.select(1.0):
            sock = key.fileobj
            chunk = sock.recv(65536)
            if not chunk:
                raise SystemExit("the server closed a keep-alive connection")
            entry = state[sock]
            done, entry[0] = _answers(entry[0] + chunk)
            if done:
                now = time.perf_counter()
                if measure_from <= now < measure_to:
                    latencies.append((now - entry[1]) * 1000)
                    count += 1
                    failures += done[0][0] != 200
                entry[1] = now
                sock.send(request)
        now = time.perf_counter()
    for sock in sockets:
        sock.close()
    if failures:
        raise SystemExit(f"{failures} answers were not 200")
    return count / window, latencies


def burst(port, path):
    """Send BURST requests at once on BURST open connections; wait for every answer."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    sockets = connect(port, BURST)
    for sock in sockets:
        sock.send(request)
    statuses, deadline = [], time.monotonic() + 60
    for sock in sockets:
        buffer = b""
        while True:
            done, buffer = _answers(buffer)
            if done:
                statuses.append(done[0][0])
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise SystemExit("the burst's answers did not come in time")
            sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:
                raise SystemExit("the server closed a connection during the burst")
            buffer += chunk
        sock.close()
    if statuses != [200] * BURST:
        raise SystemExit(f"burst answers were not all 200: {sorted(set(statuses))}")


# ---------------------------------------------------------------------------
# the parent: servers started and measured one after the other
# ---------------------------------------------------------------------------

def free_port():
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        return placeholder.getsockname()[1]


def memory_kb(pid):
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(value.split()[0])
    return values["VmRSS"], values["VmHWM"]


class Server:
    """A peer's server subprocess, ready once its endpoint answers 200."""

    def __init__(self, peer, ours_dir):
        self.peer, self.port = peer, free_port()
        env = common.env_for(ours_dir if peer == "pihace.py" else None, bytecode=True)
        descriptor, self.calls_file = tempfile.mkstemp(prefix="pihace-bench-calls-")
        os.close(descriptor)
        env["PIHACE_BENCH_CALLS"] = self.calls_file
        self.process = subprocess.Popen(
            [VENV_PYTHON, "-c", SERVERS[peer], str(self.port)],
            cwd=BENCH, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(f"GET {PATHS[peer]} HTTP/1.1\r\nHost: x\r\n"
                                 "Connection: close\r\n\r\n".encode())
                    if sock.recv(100).startswith(b"HTTP/1.1 200 "):
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise SystemExit(f"{peer}'s server did not start:\n"
                                 f"{self.process.stderr.read().decode(errors='replace')}")
            time.sleep(0.05)  # polling for the server to listen, with a deadline

    def calls(self):
        """How many times the server's checker has run."""
        return os.path.getsize(self.calls_file)

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.process.stderr.close()
        os.unlink(self.calls_file)


def run_round(round_number, ours_dir, warmup, window, results):
    for peer in in_order(PEERS, round_number):
        server = Server(peer, ours_dir)
        try:
            rate, latencies = load(server.port, PATHS[peer], warmup, window)
            rss, peak = memory_kb(server.process.pid)
        finally:
            server.kill()
        cuts = statistics.quantiles(latencies, n=100)
        results[peer]["rate"].append(rate)
        results[peer]["p50"].append(statistics.median(latencies))
        results[peer]["p99"].append(cuts[98])
        results[peer]["rss"].append(rss / 1024)
        results[peer]["peak"].append(peak / 1024)
        print(f"round {round_number + 1} {peer}: {rate:,.0f} req/s, p99 {cuts[98]:.2f} ms, "
              f"RSS {rss / 1024:.1f} MB", file=sys.stderr)


def run_bursts(ours_dir):
    """{peer: check runs started by one burst of BURST requests} on fresh servers."""
    runs = {}
    for peer in PEERS:
        server = Server(peer, ours_dir)  # its readiness request ran the check once
        try:
            time.sleep(1.1)  # the readiness request's report expires: the burst starts anew
            before = server.calls()
            burst(server.port, PATHS[peer])
            runs[peer] = server.calls() - before
        finally:
            server.kill()
    return runs


def versions():
    done = subprocess.run([VENV_PYTHON, "-c", "import fastapi, uvicorn, platform; print("
                           "f'fastapi {fastapi.__version__}, uvicorn {uvicorn.__version__}, "
                           "{platform.python_implementation()} {platform.python_version()}')"],
                          cwd=BENCH, env=common.env_for(), capture_output=True, text=True,
                          check=True)
    return done.stdout.strip()


def spread(values, decimals=1, thousands=False):
    return f"{fmt(min(values), decimals, thousands)}..{fmt(max(values), decimals, thousands)}"


def print_table(results, runs, rounds, window, loads, identity):
    print(f"pihace.py HealthServer vs pihace 1.0.0 WebProvider (FastAPI, uvicorn): {CLIENTS} "
          f"keep-alive clients, {rounds} round(s) of {window:g} s, peers alternating")
    print(f"pihace.py: {identity}")
    print(f"machine: {machine(versions())}; load average {loads[0]:.2f} before, "
          f"{loads[-1]:.2f} after")
    print()
    ours, theirs = results["pihace.py"], results["pihace 1.0.0"]
    med = {peer: {key: statistics.median(values) for key, values in figures.items()}
           for peer, figures in results.items()}
    targets = {
        "rate": ("req/s, /health with a cached result", ">= 2x 1.0.0", True, 0, True),
        "p50": ("median latency, ms", "-", False, 2, False),
        "p99": ("p99 latency, ms", "<= 0.5x 1.0.0", False, 2, False),
        "rss": ("server RSS after the load, MB", "<= 0.5x 1.0.0", False, 1, False),
        "peak": ("server peak RSS (VmHWM), MB", "-", False, 1, False),
    }
    lines = [["figure", "server", "median", "min..max", "pihace.py/1.0.0", "target"]]
    for key, (label, target, higher_better, decimals, thousands) in targets.items():
        ratio = med["pihace.py"][key] / med["pihace 1.0.0"][key]
        if target != "-":
            goal = 2.0 if higher_better else 0.5
            met = ratio >= goal if higher_better else ratio <= goal
            target = f"{target}: {'met' if met else 'MISSED'}"
        for index, (peer, figures) in enumerate((("pihace.py", ours), ("pihace 1.0.0", theirs))):
            lines.append([label if index == 0 else "", peer,
                          fmt(med[peer][key], decimals, thousands),
                          spread(figures[key], decimals, thousands),
                          f"{ratio:.2f}" if index == 0 else "", target if index == 0 else ""])
    lines.append([f"check runs started by {BURST} concurrent requests", "pihace.py",
                  str(runs["pihace.py"]), "-", "-",
                  f"exactly 1: {'met' if runs['pihace.py'] == 1 else 'MISSED'}"])
    lines.append(["", "pihace 1.0.0", str(runs["pihace 1.0.0"]), "-", "", ""])
    print_rows(lines, right={2, 3, 4})
    note = common.load_note(loads)
    if note:
        print("\n" + note)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one round of 2 s")
    parser.add_argument("--rounds", type=int, help="rounds (default 3, quick 1)")
    parser.add_argument("--window", type=float, help="seconds of load per server and round "
                        "(default 5, quick 2)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 3)
    window = args.window or (2.0 if args.quick else 5.0)
    ensure_venv("pihace.providers.web, fastapi, uvicorn")
    identity = ours_identity()
    loads = [os.getloadavg()[0]]
    results = {peer: {key: [] for key in ("rate", "p50", "p99", "rss", "peak")} for peer in PEERS}
    with ours_snapshots() as (snapshot, _):
        # bytecode cached, as after pip install (pihace 1.0.0 runs from the .pyc pip wrote)
        subprocess.run([VENV_PYTHON, "-c", "import pihace"], cwd=BENCH, check=True,
                       env=common.env_for(snapshot, bytecode=True))
        for round_number in range(rounds):
            run_round(round_number, snapshot, 1.0, window, results)
        runs = run_bursts(snapshot)
    loads.append(os.getloadavg()[0])
    print_table(results, runs, rounds, window, loads, identity_after(identity))
    return 0


if __name__ == "__main__":
    common.stop_on_sigterm()
    sys.exit(main())
