#!/usr/bin/env python3
"""Benchmark: the watcher's CPU per --on-change hook, pihace's way against subprocess.run.

    python3 bench/bench_hooks.py             # 7 rounds of 200 hooks each way, about a minute
    python3 bench/bench_hooks.py --quick     # 3 rounds of 100
    python3 bench/bench_hooks.py --pihace FILE   # measure another pihace.py (an older one, say)

A fleet of 100,000 devices with a few percent of them changing runs about 28 hooks a second
(bench_fleetload.py); each costs the watcher what it takes to start the command and wait for
its end. One subprocess (the venv's interpreter, pihace.py from a snapshot on its path, psutil
blocked) holds `--ballast` MB of small objects, as a watcher of 100,000 devices does, and runs
the same bash hook as bench_fleetload.py (one line appended to a file) through
pihace._Hooks (4 workers, the report on standard input, the change in the environment):

  pihace      _Hooks as it runs on this machine (posix_spawn and a pidfd where Linux 5.3 and
              Python 3.9 allow)
  subprocess  the same _Hooks made to use subprocess.run (its way where there is no pidfd, and
              on every platform before), the stdlib's way to run a command with a timeout

Each round queues `--hooks` changes and waits for their end (close()); the order alternates
from round to round. Figures are the medians over rounds of: the process's own CPU per hook
(user + system, all its threads: what --on-change costs the watcher; and its user time
alone, which the machine's other tenants disturb less), the hooks' CPU per hook
(RUSAGE_CHILDREN: the command itself, the same both ways) and the wall time per hook.
"""

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import common
from common import (REPO, VENV_PYTHON, fmt, identity_after, in_order, ours_identity,
                    ours_snapshots, print_rows)

PEERS = ("pihace", "subprocess")


def work(options):
    """In the subprocess: rounds of hooks each way; the per-round figures as JSON."""
    sys.modules["psutil"] = None
    import pihace

    ballast = [bytearray(900) for _ in range(options["ballast"] * 1000)]  # ~1 KB each
    folder = tempfile.mkdtemp(prefix="pihace-bench-hooks-")
    script = os.path.join(folder, "hook.sh")
    with open(script, "w") as out:
        out.write('#!/bin/bash\necho "$PIHACE_DEVICE $PIHACE_OLD_STATE $PIHACE_NEW_STATE '
                  f'$EPOCHREALTIME" >> {os.path.join(folder, "hooks.txt")}\n')
    os.chmod(script, 0o755)
    device = {"device": "sensor-000001@h000001.site-01.example", "name": "sensor-000001",
              "host": "h000001.site-01.example", "first_seen": 1.8e9}
    report = {"status": "Unavailable", "rate": "2/3", "checks": {
        name: {"status": "fail" if name == "db" else "pass", "duration_ms": 3.2}
        for name in ("db", "cache", "broker")}}
    figures = {peer: {"self_us": [], "user_us": [], "children_us": [], "wall_ms": []}
               for peer in PEERS}
    spawns = None
    for round_number in range(options["rounds"]):
        for peer in in_order(PEERS, round_number):
            hooks = pihace._Hooks(script, 10)
            spawns = hooks._spawns if peer == "pihace" else spawns
            if peer == "subprocess":
                hooks._spawns = False
            before, children, started = (resource.getrusage(resource.RUSAGE_SELF),
                                         resource.getrusage(resource.RUSAGE_CHILDREN),
                                         time.perf_counter())
            for _ in range(options["hooks"]):
                hooks(device, "up", "down", report)
            hooks.close(timeout=600)
            wall = time.perf_counter() - started
            after, children_after = (resource.getrusage(resource.RUSAGE_SELF),
                                     resource.getrusage(resource.RUSAGE_CHILDREN))
            assert hooks.dropped == 0, "a hook was dropped: --hooks is over the backlog"
            n = options["hooks"]
            figures[peer]["self_us"].append(1e6 * (after.ru_utime + after.ru_stime -
                                                   before.ru_utime - before.ru_stime) / n)
            figures[peer]["user_us"].append(1e6 * (after.ru_utime - before.ru_utime) / n)
            figures[peer]["children_us"].append(
                1e6 * (children_after.ru_utime + children_after.ru_stime -
                       children.ru_utime - children.ru_stime) / n)
            figures[peer]["wall_ms"].append(1e3 * wall / n)
    with open(os.path.join(folder, "hooks.txt")) as lines:
        ran = sum(1 for _ in lines)
    shutil.rmtree(folder)
    del ballast
    print(json.dumps({"file": pihace.__file__, "figures": figures, "ran": ran,
                      "spawns": spawns}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of 100 hooks")
    parser.add_argument("--rounds", type=int, help="rounds (default 7)")
    parser.add_argument("--hooks", type=int, help="hooks each way per round (default 200)")
    parser.add_argument("--ballast", type=int, default=90, metavar="MB",
                        help="memory the process holds, as a watcher does (default 90)")
    parser.add_argument("--pihace", metavar="FILE", help="measure this pihace.py instead")
    parser.add_argument("--worker", metavar="JSON", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        work(json.loads(args.worker))
        return 0
    common.stop_on_sigterm()
    options = {"rounds": args.rounds or (3 if args.quick else 7),
               "hooks": args.hooks or (100 if args.quick else 200), "ballast": args.ballast}
    identity = ours_identity()
    loads = [os.getloadavg()]
    started = time.monotonic()
    with ours_snapshots() as (snapshot, _):
        if args.pihace:
            shutil.copy(args.pihace, os.path.join(snapshot, "pihace.py"))
            identity = f"{os.path.abspath(args.pihace)} (--pihace)"
        done = subprocess.run([VENV_PYTHON if os.path.exists(VENV_PYTHON) else sys.executable,
                               os.path.abspath(__file__), "--worker", json.dumps(options)],
                              cwd=common.BENCH, env=common.env_for(snapshot),
                              capture_output=True, text=True, timeout=3600)
        if done.returncode:
            raise SystemExit(f"the worker failed:\n{done.stderr}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert result["file"].startswith(snapshot + os.sep), result["file"]
    loads.append(os.getloadavg())
    figures = result["figures"]
    medians = {peer: {name: statistics.median(values) for name, values in figures[peer].items()}
               for peer in PEERS}
    commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    print()
    print(f"pihace.py ({REPO}, HEAD {commit}): --on-change hooks, one run, "
          f"{time.monotonic() - started:.0f} s")
    print(f"pihace.py: {identity_after(identity) if not args.pihace else identity}")
    print(common.machine_and_loads(loads))
    print()
    lines = [("figure (median of rounds, per hook)", "pihace", "subprocess", "ratio", "spread")]
    for name, label in (("self_us", "the watcher's CPU (user + system), us"),
                        ("user_us", "  of which user, us"), ("children_us", "the hook's CPU, us"),
                        ("wall_ms", "wall time, 4 at once, ms")):
        ours, peer = medians["pihace"][name], medians["subprocess"][name]
        spread = ", ".join(f"{min(figures[p][name]):.0f}..{max(figures[p][name]):.0f}"
                           for p in PEERS)
        lines.append((label, fmt(ours, 2, thousands=True), fmt(peer, 2, thousands=True),
                      f"{ours / peer:.2f}" if peer else "-", spread))
    print_rows(lines, right=(1, 2, 3))
    print()
    print(f"- {options['rounds']} rounds of {options['hooks']} hooks each way, order alternating; "
          f"{result['ran']:,} hook lines written (all ran). pihace spawned its hooks here: "
          f"{'yes (posix_spawn, pidfd)' if result['spawns'] else 'no (no pidfd: subprocess both ways)'}; "
          f"ballast {options['ballast']} MB.")
    common.print_load_note(loads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
