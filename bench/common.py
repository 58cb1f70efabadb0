"""What bench_check.py and bench_amqp.py share: the venv, subprocess environments, imports timed,
the machine and pihace.py identity lines, number formatting and the table layout.

Stdlib only. The scripts import it as ``common``: run as ``python3 bench/bench_X.py`` or as a
``--worker`` subprocess of the venv's interpreter, a script's own folder is sys.path[0].
"""

import contextlib
import hashlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
VENV = os.path.join(BENCH, ".venv-pihace100")
VENV_PYTHON = os.path.join(VENV, "bin", "python")
REQUIREMENTS = os.path.join(BENCH, "requirements.txt")


def env_for(ours_dir=None, bytecode=False):
    """The environment of a subprocess: PYTHONPATH=`ours_dir` (a snapshot of pihace.py) if given,
    else nothing on the path but the venv; PYTHONDONTWRITEBYTECODE=1 unless `bytecode`."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONPYCACHEPREFIX")}
    if ours_dir is not None:
        env["PYTHONPATH"] = ours_dir
    if bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def ensure_venv(imports):
    """bench/.venv-pihace100 with requirements.txt installed, unless `imports` work there already."""
    probe = [VENV_PYTHON, "-c", f"import {imports}"]
    if os.path.exists(VENV_PYTHON) and subprocess.run(probe, cwd=BENCH, env=env_for(),
                                                      capture_output=True).returncode == 0:
        return
    print(f"setting up {VENV} ...", file=sys.stderr)
    if not os.path.exists(VENV_PYTHON):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    subprocess.run([VENV_PYTHON, "-m", "pip", "install", "--quiet", "--no-deps",
                    "-r", REQUIREMENTS], check=True)
    subprocess.run(probe, cwd=BENCH, env=env_for(), check=True)


@contextlib.contextmanager
def ours_snapshots():
    """Two temporary folders with a copy of pihace.py taken now, so an edit during the run changes
    nothing and the repository's __pycache__ never matters: (snapshot, cached)."""
    with tempfile.TemporaryDirectory() as snapshot, tempfile.TemporaryDirectory() as cached:
        for directory in (snapshot, cached):
            shutil.copy2(os.path.join(REPO, "pihace.py"), directory)
        yield snapshot, cached


def in_order(items, round_number):
    """The peers in order on even rounds, reversed on odd ones."""
    return list(items) if round_number % 2 == 0 else list(reversed(items))


def bench_import(codes, runs, bytecode, peers):
    """({peer: [wall ms of each `python -c` run minus the median of "bare"]}, that median).

    `codes` maps each name, "bare" included, to (code, PYTHONPATH or None); each runs once to
    warm (the OS file cache, and __pycache__ when bytecode=True), then `runs` times, alternating.
    """
    def run(name):
        code, ours_dir = codes[name]
        start = time.perf_counter()
        subprocess.run([VENV_PYTHON, "-c", code], cwd=BENCH, check=True,
                       env=env_for(ours_dir, bytecode), stdout=subprocess.DEVNULL)
        return (time.perf_counter() - start) * 1000

    for name in codes:
        run(name)
    times = {name: [] for name in codes}
    for run_number in range(runs):
        for name in in_order(codes, run_number):
            times[name].append(run(name))
    bare = statistics.median(times["bare"])
    return {peer: [ms - bare for ms in times[peer]] for peer in peers}, bare


def usable_cpus():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def machine(versions):
    """The header's machine line, with `versions` (of Python and the clients) in the middle."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"nproc {usable_cpus()}, {model}, {versions}, {platform.system()} {platform.release()}"


def ours_identity():
    """pihace.py's line count, hash and git commit: the other engineer may be editing it."""
    with open(os.path.join(REPO, "pihace.py"), "rb") as source:
        text = source.read()
    commit = subprocess.run(["git", "-C", REPO, "log", "-1", "--format=%h", "--", "pihace.py"],
                            capture_output=True, text=True).stdout.strip() or "?"
    dirty = subprocess.run(["git", "-C", REPO, "diff", "--quiet", "--", "pihace.py"]).returncode
    lines = text.count(b"\n")
    return (f"{lines} lines, sha256 {hashlib.sha256(text).hexdigest()[:12]}, "
            f"last commit {commit}{' + uncommitted changes' if dirty else ''}")


def identity_after(identity):
    """`identity` (from the start of the run), marked if pihace.py has changed since."""
    if ours_identity() != identity:
        identity += " (pihace.py has changed since: these figures are of this version)"
    return identity


def fmt(value, decimals=3, thousands=False):
    """'-' for None; `decimals` places below 10, one below that; with `thousands`, 1,234 from
    1000 up."""
    if value is None:
        return "-"
    if thousands and abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{decimals}f}" if abs(value) < 10 else f"{value:.1f}"


def print_rows(lines, right):
    """Print `lines` of cells in columns, the first line underlined as the header; the columns
    numbered in `right` are right-aligned. Returns the widths."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for i, line in enumerate(lines):
        print("  ".join(cell.rjust(width) if j in right else cell.ljust(width)
                        for j, (cell, width) in enumerate(zip(line, widths))).rstrip())
        if i == 0:
            print("  ".join("-" * width for width in widths))
    return widths
