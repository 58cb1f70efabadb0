"""What the benchmarks share: the venv, subprocess environments and workers (run once, or driven
line by line), the broker, imports timed, snapshots of pihace.py (this tree's or a git
revision's), the machine and pihace.py identity lines, number formatting and the table layout.

Stdlib only. The scripts import it as ``common``: run as ``python3 bench/bench_X.py`` or as a
``--worker`` subprocess of the venv's interpreter, a script's own folder is sys.path[0].
"""

import contextlib
import hashlib
import json
import os
import platform
import select
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


@contextlib.contextmanager
def revision_snapshot(revision):
    """A temporary folder holding pihace.py as of git `revision`, the short commit, and a line
    naming that version: (folder, commit, identity)."""
    def git(*args):
        done = subprocess.run(["git", "-C", REPO, *args], capture_output=True)
        if done.returncode != 0:
            raise SystemExit(f"git {' '.join(args)}: {done.stderr.decode(errors='replace').strip()}")
        return done.stdout

    commit = git("rev-parse", "--short", f"{revision}^{{commit}}").decode().strip()
    text = git("show", f"{commit}:pihace.py")
    subject = git("log", "-1", "--format=%s", commit).decode().strip()
    if len(subject) > 60:
        subject = subject[:57] + "..."
    lines, digest = text.count(b"\n"), hashlib.sha256(text).hexdigest()[:12]
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "pihace.py"), "wb") as copy:
            copy.write(text)
        yield folder, commit, f"{lines} lines, sha256 {digest}, commit {commit} \"{subject}\""


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


def run_worker(script, name, options, env, timeout=600):
    """Run `script --worker NAME JSON` with the venv's interpreter; the JSON of its last line."""
    command = [VENV_PYTHON, os.path.abspath(script), "--worker", name, json.dumps(options)]
    done = subprocess.run(command, cwd=BENCH, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"worker {name} {options.get('peer', '')} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


class WorkerProcess:
    """A `--worker` subprocess driven line by line: `argv` run in `cwd` with `env`, in its own
    session (a Ctrl-C reaches only the parent, which then kills it); words go to its stdin, JSON
    lines come back on its stdout, its stderr goes to a temporary file. kill() is safe to call
    twice. `no_answer` begins the SystemExit message of receive()."""

    def __init__(self, argv, env, cwd=BENCH, no_answer="the worker gave no answer"):
        self.no_answer = no_answer
        self.stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.stderr, start_new_session=True)
        self.pid = self.process.pid
        self._buffer = b""

    def send(self, word):
        self.process.stdin.write(word.encode() + b"\n")
        self.process.stdin.flush()

    def receive(self, timeout, doing):
        """The worker's next message, or SystemExit with its stderr."""
        deadline = time.monotonic() + timeout
        descriptor = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            chunk = None
            if left > 0 and select.select([descriptor], [], [], left)[0]:
                chunk = os.read(descriptor, 1 << 16)
            if not chunk:
                raise SystemExit(f"{self.no_answer} {doing}"
                                 f"{' in time' if left <= 0 else ''}:\n{self.error()}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def error(self):
        """The end of what the worker wrote to stderr, once it is killed."""
        self._end()
        text = ""
        if not self.stderr.closed:
            self.stderr.seek(0)
            text = self.stderr.read().decode(errors="replace")[-4000:]
        self.kill()
        return text

    def _end(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def kill(self):
        self._end()
        for stream in (self.process.stdin, self.process.stdout, self.stderr):
            try:
                stream.close()
            except OSError:  # stdin: the worker is gone with bytes unread
                pass


def versions_info(url, modules=("pika",)):
    """In a venv worker: the broker's product and version (asked through pika), Python's, and
    the __version__ of each of `modules`."""
    import importlib

    import pika

    connection = pika.BlockingConnection(pika.URLParameters(url))
    properties = connection._impl.server_properties  # noqa: SLF001 - only for the header line
    connection.close()

    def text(value):
        return value.decode() if isinstance(value, bytes) else str(value)

    info = {module: importlib.import_module(module).__version__ for module in modules}
    info.update(broker=f"{text(properties.get('product'))} {text(properties.get('version'))}",
                python=f"{platform.python_implementation()} {platform.python_version()}")
    return info


def same_source(folder, other):
    """Do two snapshot folders hold the same pihace.py?"""
    def read(where):
        with open(os.path.join(where, "pihace.py"), "rb") as source:
            return source.read()
    return read(folder) == read(other)


def stop_on_sigterm():
    """SIGTERM unwinds like Ctrl-C: workers killed, the broker stopped on the way out."""
    import signal

    def unwind(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, unwind)


@contextlib.contextmanager
def broker(url=None, name="pihace-bench"):
    """(url, notes) of the broker to use: `url`, else $PIHACE_TEST_AMQP_URL, else a private
    RabbitMQ node started now with rabbitnode.py and stopped (its folder removed) on the way out,
    also after an error or Ctrl-C."""
    url = url or os.environ.get("PIHACE_TEST_AMQP_URL")
    if url:
        yield url, ["broker: the one given (--url or PIHACE_TEST_AMQP_URL), shared with "
                    "whatever else uses it"]
        return
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    from rabbitnode import RabbitNode

    print("starting a private RabbitMQ node ...", file=sys.stderr)
    node = RabbitNode(name=name)
    try:
        node.start()
        yield node.url, [f"broker: a private RabbitMQ node on the same machine (started in "
                         f"{node.startup_seconds:.1f} s), sharing its CPUs with the client"]
    finally:
        node.close()


def raw_wait_for(protocol, sock, name, read=None):
    """The raw-socket ceilings' handshake: drive pihace's sans-IO AMQPProtocol over `sock`
    until it gives the event `name` (sending what it queued and the replies it forced, then
    feeding it `read()`, by default a recv of up to 64 KB). A Close or the connection's end
    first is a RuntimeError."""
    read = read or (lambda: sock.recv(1 << 16))
    while True:
        event = protocol.next_event()
        while event is not None:
            if getattr(event, "name", None) == name:
                return event
            if getattr(event, "name", "Connection.Lost").endswith(("Close", "Lost")):
                raise RuntimeError(f"raw socket: {event!r} while waiting for {name}")
            event = protocol.next_event()
        sock.sendall(protocol.data_to_send())
        protocol.receive_data(read())


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


def machine_and_loads(loads):
    """The header's machine line for this Python, with `loads` (os.getloadavg() before the run
    and after it)."""
    before, after = (" ".join(f"{x:.2f}" for x in load) for load in loads)
    return (f"machine: {machine(f'CPython {sys.version.split()[0]}')}; load average {before} "
            f"before, {after} after (1, 5, 15 min)")


def print_load_note(loads):
    """The last line of a table: load_note() of the 1-minute averages in `loads`
    (os.getloadavg() before and after), when there is one."""
    note = load_note([load[0] for load in loads])
    if note:
        print(f"- {note}")


def load_note(loads):
    """A warning when the load average (samples in `loads`) nears the number of CPUs, else None."""
    usable = usable_cpus()
    if max(loads) <= usable - 0.5:
        return None
    return (f"The load average ({max(loads):.2f}) is close to or above the {usable} CPUs: "
            "other processes compete with the client and the broker. Trust only differences "
            "larger than the min..max spread.")


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
