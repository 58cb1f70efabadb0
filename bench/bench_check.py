#!/usr/bin/env python3
"""Benchmark: this repository's pihace.py against pihace 1.0.0 from PyPI, in one run.

    python3 bench/bench_check.py            # full run, about two minutes
    python3 bench/bench_check.py --quick    # fewer rounds and iterations

Both are imported as ``pihace``, so every measurement runs in its own
subprocess with exactly one of them on the path:

    ours         PYTHONPATH=<snapshot of the repo's pihace.py taken at start>,
                 psutil blocked (sys.modules["psutil"] = None)
    ours+psutil  the same, psutil importable (the fair comparison)
    1.0.0        pihace==1.0.0 from bench/.venv-pihace100, which this script
                 creates on first use (pip install --no-deps -r requirements.txt)

All three use the virtualenv's interpreter, so only the module differs. The
order of the peers alternates from round to round; each figure is the median
over rounds of each subprocess's median. This file is stdlib-only (with
common.py, shared with bench_amqp.py): the parent only drives subprocesses, and
a subprocess re-enters it with --worker.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import common
from common import (BENCH, REPO, VENV, VENV_PYTHON, ensure_venv, fmt, identity_after, in_order,
                    machine, ours_identity, ours_snapshots, print_rows)

PEERS = ("ours", "ours+psutil", "1.0.0")


# ---------------------------------------------------------------------------
# worker: runs in a subprocess, with one pihace on its path
# ---------------------------------------------------------------------------

def _sleeper():
    time.sleep(0.05)
    return True


def _timed_checks(hc, warmup, iterations):
    """Milliseconds of each of `iterations` check() calls, after `warmup` calls."""
    for _ in range(warmup):
        hc.check()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        report = hc.check()
        times.append((time.perf_counter() - start) * 1000)
    assert report["status"] == "Available", report
    return times, report


def _handoff_times(iterations):
    """ms of a bare round trip to another thread (SimpleQueue there and back)."""
    import queue
    import threading

    calls, results = queue.SimpleQueue(), queue.SimpleQueue()

    def serve():
        while True:
            results.put(calls.get()())

    threading.Thread(target=serve, daemon=True).start()
    times = []
    for index in range(iterations + 200):
        start = time.perf_counter()
        calls.put(bool)
        results.get()
        if index >= 200:
            times.append((time.perf_counter() - start) * 1000)
    return times


def worker(figure, iterations, block_psutil):
    if block_psutil:
        sys.modules["psutil"] = None  # import psutil now raises ImportError
    import pihace
    from pihace.healthcheck import HealthCheck

    if figure == "system":
        hc = HealthCheck(with_system=True)
        times, report = _timed_checks(hc, 1, iterations)
        assert report["system"] and "cpu_usage" in report["system"], report
    elif figure == "sleepers":
        hc = HealthCheck()
        for i in range(50):
            hc.register(f"sleeper{i}", _sleeper)
        times, report = _timed_checks(hc, 0, iterations)  # the first call is kept: cold
        assert report["rate"] == "50/50", report
    elif figure == "trivial":
        hc = HealthCheck()
        hc.register("trivial", lambda: True)
        times, report = _timed_checks(hc, 200, iterations)
    elif figure == "handoff":  # the floor of any check with a real timeout: one thread
        times = _handoff_times(iterations)  # hands the call over and one hands it back
    else:
        raise SystemExit(f"unknown figure {figure!r}")
    psutil_module = sys.modules.get("psutil")
    print(json.dumps({"file": pihace.__file__, "psutil": psutil_module is not None, "ms": times}))


# ---------------------------------------------------------------------------
# parent: set-up, subprocesses, table
# ---------------------------------------------------------------------------

def env_for(peer, ours_dir, bytecode=False):
    """The environment of a subprocess for `peer`: only its pihace importable."""
    return common.env_for(None if peer == "1.0.0" else ours_dir, bytecode)


def run_worker(peer, figure, iterations, ours_dir):
    command = [VENV_PYTHON, os.path.abspath(__file__), "--worker", figure, str(iterations)]
    if peer == "ours":
        command.append("--block-psutil")
    out = subprocess.run(command, cwd=BENCH, env=env_for(peer, ours_dir), check=True,
                         capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    # guard against measuring the wrong module
    expected = VENV if peer == "1.0.0" else ours_dir
    assert os.path.abspath(result["file"]).startswith(expected + os.sep), (peer, result["file"])
    assert result["psutil"] == (peer != "ours"), (peer, result)
    return result["ms"]


def bench_checks(rounds, plan, ours_dir):
    """{(figure, peer): [per-round medians]}; `plan` maps figure to {peer: iterations}."""
    results = {}
    for round_number in range(rounds):
        for figure, iterations in plan.items():
            for peer in in_order(PEERS, round_number):
                ms = run_worker(peer, figure, iterations[peer], ours_dir)
                if figure == "sleepers":  # the cold first call and the later ones apart
                    results.setdefault(("sleepers-first", peer), []).append(ms[0])
                    results.setdefault(("sleepers-later", peer), []).append(statistics.median(ms[1:]))
                else:
                    results.setdefault((figure, peer), []).append(statistics.median(ms))
        print(f"  round {round_number + 1}/{rounds} done", file=sys.stderr)
    return results


def bench_import(runs, bytecode, ours_dir):
    """Wall ms of each `import pihace` run minus the median of `pass`, for each peer.

    Ours is imported from a snapshot of pihace.py in `ours_dir`, so whether it
    has bytecode in __pycache__ depends only on `bytecode`, never on the
    repository's state. With bytecode=True each peer first runs once to write it.
    """
    commands = {
        "bare": ("1.0.0", "pass"),  # no PYTHONPATH, nothing imported
        "ours": ("ours", "import sys; sys.modules['psutil'] = None; import pihace"),
        "ours+psutil": ("ours+psutil", "import pihace"),
        "1.0.0": ("1.0.0", "import pihace"),
    }
    for peer in PEERS:  # guard against timing the wrong module
        where = subprocess.run([VENV_PYTHON, "-c", commands[peer][1] + "; print(pihace.__file__)"],
                               cwd=BENCH, env=env_for(peer, ours_dir), check=True,
                               capture_output=True, text=True).stdout.strip()
        assert where.startswith((VENV if peer == "1.0.0" else ours_dir) + os.sep), (peer, where)
    codes = {name: (code, None if peer == "1.0.0" else ours_dir)
             for name, (peer, code) in commands.items()}
    return common.bench_import(codes, runs, bytecode, PEERS)


def versions():
    return subprocess.run(
        [VENV_PYTHON, "-c", "import platform, psutil; print(platform.python_implementation(), "
         "platform.python_version(), 'psutil', psutil.__version__)"],
        cwd=BENCH, env=env_for("1.0.0", None), capture_output=True, text=True).stdout.strip()


def ratio(ours, theirs):
    if ours is None or not theirs:
        return "-"
    return f"{ours / theirs:.3g}"


def verdict(target, *values):
    if target is None:
        return "-"
    met = all(value is not None and value <= target for value in values)
    return f"<= {target:g} ms, {'met' if met else 'MISSED'}"


def print_table(results, import_env, import_cached, bare_ms, rounds, import_runs, loads,
                identity):
    samples = [
        ("check(with_system=True), ms/call", [results[("system", p)] for p in PEERS], None),
        ("50 checkers sleep(0.05), first check(), ms",
         [results[("sleepers-first", p)] for p in PEERS], 80),
        ("50 checkers sleep(0.05), later check(), ms",
         [results[("sleepers-later", p)] for p in PEERS], 80),
        ("1 checker lambda: True, ms/check()", [results[("trivial", p)] for p in PEERS], 0.1),
        ("  floor: a bare thread round trip, ms", [results[("handoff", p)] for p in PEERS],
         None),
        ("import - bare, no bytecode cache (env), ms", [import_env[p] for p in PEERS], None),
        ("import - bare, bytecode cached, ms", [import_cached[p] for p in PEERS], None),
    ]
    rows = [(name, [statistics.median(values) for values in per_peer], target)
            for name, per_peer, target in samples]
    header = ("figure", "ours", "ours+psutil", "pihace 1.0.0", "ours/1.0.0",
              "ours+psutil/1.0.0", "target (ours, ours+psutil)")
    lines = [header]
    for name, (ours, ours_psutil, theirs), target in rows:
        lines.append((name, fmt(ours), fmt(ours_psutil), fmt(theirs), ratio(ours, theirs),
                      ratio(ours_psutil, theirs), verdict(target, ours, ours_psutil)))
    print()
    print(f"pihace.py ({REPO}) vs pihace 1.0.0: medians of {rounds} rounds "
          f"(imports: {import_runs} runs each), peers alternating")
    print(f"pihace.py: {identity}")
    print(f"machine: {machine(versions())}; load average {loads[0]:.2f} before, "
          f"{loads[1]:.2f} after")
    print()
    widths = print_rows(lines, right=range(1, len(header)))
    print()
    print("spread, min..max of the values whose median is shown (per-round medians; "
          "single runs for imports):")
    for name, per_peer, _ in samples:
        print(f"  {name.ljust(widths[0])}  " + "; ".join(
            f"{peer} {fmt(min(values))}..{fmt(max(values))}" for peer, values in zip(PEERS, per_peer)))
    print()
    print(f"bare `python -c pass`: {bare_ms[0]:.1f} ms (env), {bare_ms[1]:.1f} ms (cached run).")
    print("'no bytecode cache (env)' is PYTHONDONTWRITEBYTECODE=1 as this environment sets it: "
          "pihace.py is compiled on every run, while pihace 1.0.0 keeps the .pyc files pip "
          "wrote at install time. 'bytecode cached' unsets it after one warm run.")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and iterations")
    parser.add_argument("--rounds", type=int, help="rounds of figures 1-3 (default 5, quick 2)")
    parser.add_argument("--worker", nargs=2, metavar=("FIGURE", "ITERATIONS"), help=argparse.SUPPRESS)
    parser.add_argument("--block-psutil", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), args.block_psutil)
        return 0

    quick = args.quick
    rounds = args.rounds or (2 if quick else 5)
    import_runs = 8 if quick else 20
    ours_n = {"system": 100 if quick else 500, "sleepers": 3 if quick else 5,
              "trivial": 1000 if quick else 5000, "handoff": 1000 if quick else 5000}
    theirs_n = {"system": 2 if quick else 5, "sleepers": 3 if quick else 5,
                "trivial": 200 if quick else 1000, "handoff": 1000 if quick else 5000}
    plan = {figure: {"ours": ours_n[figure], "ours+psutil": ours_n[figure],
                     "1.0.0": theirs_n[figure]} for figure in ours_n}

    ensure_venv("pihace.healthcheck, psutil")
    identity = ours_identity()
    loads = [os.getloadavg()[0]]
    # Ours runs from snapshots of pihace.py taken now (one snapshot never gets a __pycache__).
    with ours_snapshots() as (snapshot, cached):
        print("figures 1-3 ...", file=sys.stderr)
        results = bench_checks(rounds, plan, snapshot)
        print("imports ...", file=sys.stderr)
        import_env, bare_env = bench_import(import_runs, False, snapshot)
        import_cached, bare_cached = bench_import(import_runs, True, cached)
    loads.append(os.getloadavg()[0])
    print_table(results, import_env, import_cached, (bare_env, bare_cached), rounds,
                import_runs, loads, identity_after(identity))
    return 0


if __name__ == "__main__":
    sys.exit(main())
