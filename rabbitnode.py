"""Run private RabbitMQ nodes for pihace's tests and benchmarks.

Test-only helper (standard library only); not part of the ``pihace`` module.
It runs Debian's ``rabbitmq-server`` package as the current user, each node
with its own ports, data, logs and Erlang cookie in a temporary folder::

    with RabbitNode() as node:          # start() on enter, close() on exit
        print(node.url)                 # amqp://guest:guest@127.0.0.1:PORT/
        node.ctl("list_queues")         # rabbitmqctl -n NODE list_queues
        node.kill()                     # SIGKILL, data kept
        node.start()                    # same ports, same data

Several nodes may run at once; they share the machine's epmd (port 4369),
which the first node starts and which is left running, as RabbitMQ does.
"""

from __future__ import annotations

import atexit
import itertools
import os
import random
import secrets
import shutil
import signal
import socket
import string
import subprocess
import tempfile
import time
from typing import BinaryIO

__all__ = ["CTL", "RabbitCluster", "RabbitNode", "RabbitNodeError", "SERVER", "amqp_probe", "free_port"]

# Not /usr/sbin/rabbitmq-server: run as root, that wrapper switches to the
# "rabbitmq" user, which cannot read our temporary folder or cookie.
RABBITMQ_BIN = "/usr/lib/rabbitmq/bin"
SERVER = os.path.join(RABBITMQ_BIN, "rabbitmq-server")
CTL = os.path.join(RABBITMQ_BIN, "rabbitmqctl")

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
HOST = "127.0.0.1"

# Ports never handed out by free_port(): epmd, RabbitMQ's defaults, and the
# fixed range rabbitmqctl itself listens on for Erlang distribution
# (RABBITMQ_CTL_DIST_PORT_MIN = 35672 .. +10, set in rabbitmq-env).
_AVOID_PORTS = {4369, 5671, 5672, 15672, 25672, *range(35672, 35683)}
_reserved_ports: set[int] = set()
_counter = itertools.count(1)
_live_nodes: set[RabbitNode] = set()


class RabbitNodeError(RuntimeError):
    """A private RabbitMQ node failed to start, stop or obey rabbitmqctl."""


# ---------------------------------------------------------------- helpers

def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Its own generator: pytest-randomly reseeds the global one before every test, which would
# make every test (and every session with the same seed) try the same ports first.
_ports = random.Random()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now and not handed out before.

    Ports come from *below* the kernel's ephemeral range: a node keeps its
    ports across stop()/start(), and while it is down an ephemeral port could
    be taken by any outgoing connection of the machine.
    """
    low, high = 10000, min(_ephemeral_low(), 65536)
    if high - low < 1000:  # odd ip_local_port_range: use the whole range
        low, high = 1024, 65536
    for _ in range(1000):
        port = _ports.randrange(low, high)
        if port in _AVOID_PORTS or port in _reserved_ports:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
        _reserved_ports.add(port)
        return port
    raise RabbitNodeError("no free TCP port found on 127.0.0.1")


def _new_cookie() -> str:
    return "".join(secrets.choice(string.ascii_uppercase) for _ in range(20))


def amqp_probe(port: int, host: str = HOST, timeout: float = 1.0) -> bool:
    """True if an AMQP 0-9-1 broker answers the protocol header on host:port.

    The broker replies with Connection.Start, a method frame: first byte 0x01.
    The probe then just closes the socket (the broker logs it as a client
    that closed the connection, which is harmless).
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(PROTOCOL_HEADER)
            return s.recv(1) == b"\x01"
    except OSError:
        return False


def _proc_children() -> dict[int, list[int]]:
    """Map ppid -> [pid] for every process, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat[stat.rindex(b")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat, to tell a process from a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2:].split()[19].decode()


def _descendants(root: int) -> list[tuple[int, str | None]]:
    """(pid, start time) of every process below root."""
    children = _proc_children()
    found, todo = [], list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        found.append((pid, _start_time(pid)))
        todo.extend(children.get(pid, ()))
    return found


def _tail(path: str, lines: int = 40) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return f"({path}: not found)"
    return "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------- the node

class RabbitNode:
    """One private RabbitMQ node on 127.0.0.1 with its own folder and ports.

    base_dir: folder to create the node's folder in (a new temporary folder
        if None; that one is removed by close()).
    name: prefix of the Erlang node name; the pid and a counter are added so
        that nodes of concurrent test runs never clash.
    extra_config: lines appended to the generated rabbitmq.conf. They are
        formatted with str.format: ``{port}``, ``{tls_port}``, ``{dir}``;
        write literal braces as ``{{ }}``. Mentioning ``{tls_port}`` picks a
        free TLS port, as does ``tls_port=True``.
    tls: dict of ssl_options (cacertfile, certfile, keyfile, verify, ...):
        adds a TLS listener on 127.0.0.1:tls_port with those options.
    cookie: the Erlang cookie (a random one if None); nodes of one cluster
        must share it.
    """

    def __init__(
        self,
        base_dir: str | os.PathLike | None = None,
        name: str = "pihace",
        *,
        extra_config: list[str] | tuple[str, ...] = (),
        tls: dict[str, str] | None = None,
        tls_port: bool | int = False,
        cookie: str | None = None,
    ) -> None:
        self.nodename = f"{name}-{os.getpid()}-{next(_counter)}@localhost"
        self._own_base = base_dir is None
        self._base = tempfile.mkdtemp(prefix="pihace-rabbit-") if base_dir is None else os.fspath(base_dir)
        self.dir = os.path.join(self._base, self.nodename.split("@")[0])
        os.makedirs(self.dir)
        self.home = os.path.join(self.dir, "home")
        self.log_dir = os.path.join(self.dir, "log")
        self.console_log = os.path.join(self.dir, "server.out")
        self.log_file = os.path.join(self.log_dir, f"{self.nodename}.log")
        self.config_file = os.path.join(self.dir, "rabbitmq.conf")

        self.host = HOST
        self.port = free_port()
        self.dist_port = free_port()
        wants_tls = tls is not None or tls_port or any("{tls_port}" in line for line in extra_config)
        if isinstance(tls_port, int) and not isinstance(tls_port, bool):
            self.tls_port: int | None = tls_port
        else:
            self.tls_port = free_port() if wants_tls else None

        self._proc: subprocess.Popen | None = None
        self._console: BinaryIO | None = None
        self.startup_seconds: float | None = None  # of the last start()

        os.makedirs(self.home)
        os.makedirs(self.log_dir)
        # Write the Erlang cookie ourselves: otherwise the server and the
        # first rabbitmqctl (which may run before the server got that far)
        # could each create ~/.erlang.cookie with a different random value,
        # and the CLI would then be refused. Erlang insists on mode 0400/0600.
        cookie_file = os.path.join(self.home, ".erlang.cookie")
        fd = os.open(cookie_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "w") as f:
            f.write(cookie or _new_cookie())
        # An empty plugins file: no management plugin (and no port 15672).
        open(os.path.join(self.dir, "enabled_plugins"), "w").close()
        # Empty, so /etc/rabbitmq/rabbitmq-env.conf is not sourced.
        open(os.path.join(self.dir, "rabbitmq-env.conf"), "w").close()
        self._write_config(extra_config, tls)

        self.env = self._make_env()
        _live_nodes.add(self)

    # -- setup

    def _write_config(self, extra_config, tls) -> None:
        lines = [
            "# generated by rabbitnode.py",
            # The AMQP listener itself comes from RABBITMQ_NODE_IP_ADDRESS and
            # RABBITMQ_NODE_PORT in the environment.
            "loopback_users.guest = true",
            # Keep a nearly full disk from raising the disk alarm and blocking
            # publishers in unrelated tests; tests can still raise it with
            # `rabbitmqctl set_disk_free_limit`.
            "disk_free_limit.absolute = 1MB",
            "log.file.level = info",
            "log.console = false",
        ]
        if tls is not None:
            lines.append(f"listeners.ssl.default = {HOST}:{self.tls_port}")
            lines.extend(f"ssl_options.{key} = {value}" for key, value in tls.items())
        fields = {"port": self.port, "tls_port": self.tls_port, "dir": self.dir}
        lines.extend(line.format(**fields) for line in extra_config)
        with open(self.config_file, "w") as f:
            f.write("\n".join(lines) + "\n")

    def _make_env(self) -> dict[str, str]:
        # Drop inherited RabbitMQ/Erlang settings: they would leak into the node.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=self.home,
            # The Elixir CLI warns on every call under a non-UTF-8 locale.
            LC_ALL="C.UTF-8",
            LANG="C.UTF-8",
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS=HOST,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=os.path.join(self.dir, "mnesia"),
            RABBITMQ_LOG_BASE=self.log_dir,
            RABBITMQ_ENABLED_PLUGINS_FILE=os.path.join(self.dir, "enabled_plugins"),
            RABBITMQ_PID_FILE=os.path.join(self.dir, "rabbitmq.pid"),
            RABBITMQ_CONFIG_FILE=self.config_file,
            RABBITMQ_ADVANCED_CONFIG_FILE=os.path.join(self.dir, "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=os.path.join(self.dir, "rabbitmq-env.conf"),
        )
        return env

    # -- properties

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.host}:{self.port}/"

    @property
    def tls_url(self) -> str | None:
        if self.tls_port is None:
            return None
        return f"amqps://guest:guest@{self.host}:{self.tls_port}/"

    @property
    def pid(self) -> int | None:
        """Pid of the rabbitmq-server shell script (leader of the process group)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RabbitNode {self.nodename} port={self.port} {state}>"

    def __enter__(self) -> RabbitNode:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def log_tail(self, lines: int = 40) -> str:
        """The end of the console output and of RabbitMQ's own log."""
        return (
            f"--- {self.console_log}\n{_tail(self.console_log, lines)}\n"
            f"--- {self.log_file}\n{_tail(self.log_file, lines)}"
        )

    # -- life cycle

    def start(self, timeout: float = 60) -> None:
        """Start the node and return once it accepts AMQP connections.

        Restarting after stop() or kill() reuses the ports and the data, so
        durable queues and their persistent messages survive.
        """
        if self.running:
            raise RabbitNodeError(f"{self.nodename} is already running")
        if not os.access(SERVER, os.X_OK):
            raise FileNotFoundError(
                f"{SERVER} not found: install Debian's rabbitmq-server package "
                "(apt-get install rabbitmq-server, or run .ci/setup as root)"
            )
        if self._console is not None:
            self._console.close()
        self._console = open(self.console_log, "ab")
        self._console.write(f"\n===== start {time.strftime('%H:%M:%S')} =====\n".encode())
        self._console.flush()
        log_offset = self._log_size()  # the log is appended to on restarts
        started = time.monotonic()
        self._proc = subprocess.Popen(
            [SERVER],
            env=self.env,
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=self._console,
            stderr=subprocess.STDOUT,
            # Own process group, so kill() reaches the shell script and
            # beam.smp; erl_child_setup makes yet another session, which is
            # why kill() also walks /proc for descendants.
            start_new_session=True,
        )
        try:
            self._wait_ready(started + timeout, log_offset)
        except BaseException:
            self.kill()
            raise
        self.startup_seconds = time.monotonic() - started

    def _wait_ready(self, deadline: float, log_offset: int) -> None:
        # `rabbitmqctl await_startup` alone is a poor wait: it fails at once
        # (exit 69) until the node has registered with epmd, and while the
        # node boots it re-checks only every 10 s; each call also costs about
        # a second of CLI start-up. So poll the AMQP port (the listener opens
        # at the very end of the boot, ~0.1 s before "Server startup
        # complete" is logged), then wait for that log line.
        while True:
            code = self._proc.poll()
            if code is not None:
                raise RabbitNodeError(
                    f"rabbitmq-server {self.nodename} exited with status {code} while starting\n"
                    + self.log_tail()
                )
            if amqp_probe(self.port, timeout=0.5):
                break
            if time.monotonic() > deadline:
                raise RabbitNodeError(
                    f"rabbitmq-server {self.nodename} did not accept AMQP on port {self.port} in time\n"
                    + self.log_tail()
                )
            time.sleep(0.1)
        log_deadline = min(deadline, time.monotonic() + 5)
        while time.monotonic() < log_deadline:
            if b"Server startup complete" in self._read_log(log_offset):
                return
            time.sleep(0.05)
        # No such line (another RabbitMQ version?): ask the node itself.
        remaining = max(5.0, deadline - time.monotonic())
        self.ctl("await_startup", "--timeout", str(int(remaining)), timeout=remaining + 10)

    def _log_size(self) -> int:
        try:
            return os.path.getsize(self.log_file)
        except OSError:
            return 0

    def _read_log(self, offset: int) -> bytes:
        try:
            with open(self.log_file, "rb") as f:
                f.seek(offset)
                return f.read()
        except OSError:
            return b""

    def stop(self, timeout: float = 30) -> None:
        """Stop gracefully with `rabbitmqctl stop`; kill() if that fails or hangs."""
        if not self.running:
            self._reap()
            return
        family = _descendants(self._proc.pid)
        try:
            self.ctl("stop", timeout=timeout)
            self._proc.wait(timeout=timeout)
        except (RabbitNodeError, subprocess.TimeoutExpired):
            self.kill()
            return
        self._reap(family)

    def kill(self) -> None:
        """SIGKILL the node and every process it started; data is kept."""
        if self._proc is None:
            return
        family = _descendants(self._proc.pid)
        # Kill beam.smp and its helpers first and the rabbitmq-server shell
        # script (their parent, which waits for beam.smp) last: the script
        # then reaps beam.smp, instead of beam.smp lingering as a zombie
        # orphan that `pgrep beam` still lists.
        self._kill_family(family)
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._reap(family)

    @staticmethod
    def _kill_family(family: list[tuple[int, str | None]]) -> None:
        for pid, start in family:
            if start is not None and _start_time(pid) == start:  # not a reused pid
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    def _reap(self, family: list[tuple[int, str | None]] = ()) -> None:
        """Wait for the server and make sure none of its processes survive.

        After beam.smp exits, its port programs (erl_child_setup,
        inet_gethost, the memory/disk monitor's sh) notice and exit, but
        only after a moment; kill those still alive now.
        """
        if self._proc is not None:
            self._kill_family(family)
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                raise RabbitNodeError(f"rabbitmq-server {self.nodename} (pid {self._proc.pid}) did not exit")
        if self._console is not None:
            self._console.close()
            self._console = None

    def close(self) -> None:
        """stop() and remove the node's folder. Safe to call twice."""
        try:
            self.stop()
        finally:
            _live_nodes.discard(self)
            shutil.rmtree(self._base if self._own_base else self.dir, ignore_errors=True)

    # -- control

    def ctl(self, *args: str, timeout: float = 30) -> str:
        """Run `rabbitmqctl -n NODE ARGS...` and return its standard output."""
        cmd = [CTL, "-n", self.nodename, *args]
        proc = subprocess.Popen(
            cmd,
            env=self.env,
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # so a timeout can kill its whole VM
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.communicate()
            raise RabbitNodeError(f"{' '.join(cmd)}: no answer in {timeout} s") from None
        if proc.returncode != 0:
            raise RabbitNodeError(
                f"{' '.join(cmd)} failed with status {proc.returncode}:\n"
                + err.decode("utf-8", "replace")
                + out.decode("utf-8", "replace")
            )
        return out.decode("utf-8", "replace")


# ---------------------------------------------------------------- the cluster

class RabbitCluster:
    """Three (or ``size``) private RabbitMQ nodes joined into one cluster.

    Each node is a RabbitNode with its own name, ports and folder; they share
    an Erlang cookie. start() boots them in parallel and joins the others to
    the first with ``stop_app``, ``join_cluster``, ``start_app``::

        with RabbitCluster() as cluster:
            a, b, c = cluster.nodes
            cluster.kill(a)                    # SIGKILL, data kept
            cluster.restart(a)                 # back, rejoined and running
            cluster.quorum_leader("q")         # node holding a quorum queue's leader
            cluster.connections_per_node()     # {node: client connections}

    ``guest`` works on 127.0.0.1 on every node (users are cluster-wide).
    """

    def __init__(self, size: int = 3, base_dir: str | os.PathLike | None = None,
                 name: str = "pihace-c") -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        self._own_base = base_dir is None
        self._base = tempfile.mkdtemp(prefix="pihace-cluster-") if base_dir is None else os.fspath(base_dir)
        cookie = _new_cookie()
        self.nodes: list[RabbitNode] = []
        try:
            for i in range(size):
                self.nodes.append(RabbitNode(self._base, f"{name}{i + 1}", cookie=cookie))
        except BaseException:
            self.close()
            raise
        self.startup_seconds: float | None = None  # of the last start()

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def __repr__(self) -> str:
        return f"<RabbitCluster {' '.join(repr(node) for node in self.nodes)}>"

    def __enter__(self) -> RabbitCluster:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _node(self, node: RabbitNode | int | str) -> RabbitNode:
        """A member given as itself, its index or its Erlang node name."""
        if isinstance(node, RabbitNode):
            if node not in self.nodes:
                raise ValueError(f"{node!r} is not a node of this cluster")
            return node
        if isinstance(node, int):
            return self.nodes[node]
        for candidate in self.nodes:
            if candidate.nodename == node:
                return candidate
        raise ValueError(f"no node named {node!r} in this cluster")

    # -- life cycle

    def start(self, timeout: float = 90) -> None:
        """Boot every node in parallel, then join the others to the first one."""
        started = time.monotonic()
        deadline = started + timeout
        try:
            _in_parallel([lambda n=n: n.start(timeout=timeout) for n in self.nodes])
            first = self.nodes[0]

            def join(node: RabbitNode) -> None:
                left = lambda: max(5.0, deadline - time.monotonic())  # noqa: E731
                node.ctl("stop_app", timeout=left())
                node.ctl("join_cluster", first.nodename, timeout=left())
                node.ctl("start_app", timeout=left())

            _in_parallel([lambda n=n: join(n) for n in self.nodes[1:]])
            self.wait_running(deadline=deadline)
        except BaseException:
            self.close()
            raise
        self.startup_seconds = time.monotonic() - started

    def close(self) -> None:
        """SIGKILL every node and remove their folders. Safe to call twice.

        No graceful stop: the data goes away anyway, and a cluster whose
        members stop one after the other waits on each of them.
        """
        errors = []
        for node in self.nodes:
            try:
                node.kill()
            except Exception as exc:  # keep going: every node must go
                errors.append(exc)
            try:
                node.close()
            except Exception as exc:
                errors.append(exc)
        if self._own_base:
            shutil.rmtree(self._base, ignore_errors=True)
        if errors:
            raise errors[0]

    def kill(self, node: RabbitNode | int | str) -> RabbitNode:
        """SIGKILL a node and every process it started (its data is kept)."""
        node = self._node(node)
        node.kill()
        return node

    def stop(self, node: RabbitNode | int | str) -> RabbitNode:
        """Stop a node gracefully (`rabbitmqctl stop`)."""
        node = self._node(node)
        node.stop()
        return node

    def restart(self, node: RabbitNode | int | str, timeout: float = 60) -> RabbitNode:
        """Start a stopped or killed node; return once it runs in the cluster again."""
        node = self._node(node)
        deadline = time.monotonic() + timeout
        if not node.running:
            node.start(timeout=timeout)
        self.wait_running(deadline=deadline)
        return node

    def ensure_running(self, timeout: float = 60) -> list[RabbitNode]:
        """Bring back every node that is down; the nodes that were down.

        A killed or stopped node is started again, one whose application was
        stopped (`rabbitmqctl stop_app`) gets start_app; then the cluster is
        asked until it lists them all as running. When every node answers AMQP
        nothing is asked (no rabbitmqctl call, about 1 s each).
        """
        deadline = time.monotonic() + timeout
        down = [node for node in self.nodes if not node.running]
        app_down = [node for node in self.nodes
                    if node.running and not amqp_probe(node.port, timeout=1.0)]
        if not down and not app_down:
            return []
        _in_parallel([lambda n=n: n.start(timeout=timeout) for n in down]
                     + [lambda n=n: n.ctl("start_app", timeout=timeout) for n in app_down])
        self.wait_running(deadline=deadline)
        return down + app_down

    # -- what the cluster says

    def running_node(self) -> RabbitNode:
        """A member to ask the cluster through: one that answers AMQP if any.

        (A node being restarted has a process long before it can answer
        rabbitmqctl.)
        """
        running = [node for node in self.nodes if node.running]
        for node in running:
            if amqp_probe(node.port, timeout=1.0):
                return node
        if running:
            return running[0]
        raise RabbitNodeError("no node of the cluster is running")

    def ctl(self, *args: str, timeout: float = 30) -> str:
        """`rabbitmqctl ARGS...` on a running member."""
        return self.running_node().ctl(*args, timeout=timeout)

    def running_nodes(self) -> set[str]:
        """Names of the nodes the cluster reports as running."""
        import json

        status = json.loads(self.ctl("cluster_status", "--formatter", "json"))
        return set(status.get("running_nodes", ()))

    def wait_running(self, nodes: list[RabbitNode] | None = None, *,
                     deadline: float | None = None) -> None:
        """Wait until every node whose process runs (or `nodes`) is a running member."""
        deadline = time.monotonic() + 60 if deadline is None else deadline
        while True:
            wanted = {node.nodename for node in (nodes or self.nodes) if node.running or nodes}
            try:
                seen = self.running_nodes()
            except RabbitNodeError:
                seen = set()
            if wanted <= seen:
                return
            if time.monotonic() > deadline:
                raise RabbitNodeError(
                    f"cluster members not running in time: {sorted(wanted - seen)} (running: {sorted(seen)})")
            time.sleep(0.2)

    def connections_per_node(self) -> dict[RabbitNode, int]:
        """{node: number of client connections it holds}, every member listed.

        RabbitMQ 3.10's list_connections has no node column: each connection's
        server port (every member has its own) tells the node.
        """
        import json

        counts = dict.fromkeys(self.nodes, 0)
        by_port = {node.port: node for node in self.nodes}
        out = self.ctl("list_connections", "port", "--quiet", "--formatter", "json")
        for row in json.loads(out or "[]"):
            node = by_port.get(row.get("port"))
            if node is not None:
                counts[node] += 1
        return counts

    def quorum_leader(self, queue: str, vhost: str = "/") -> RabbitNode | None:
        """The node holding a quorum queue's leader (None while there is none)."""
        out = self.ctl("list_queues", "--vhost", vhost, "name", "leader", "--quiet",
                       "--formatter", "json")
        import json

        for row in json.loads(out or "[]"):
            if row.get("name") == queue:
                leader = row.get("leader")
                if not leader or leader in ("", "undefined"):
                    return None
                return self._node(leader)
        raise RabbitNodeError(f"no queue {queue!r} in vhost {vhost!r}")


def _in_parallel(calls) -> None:
    """Run the callables in threads; raise the first exception once all ended."""
    import threading

    errors: list[BaseException] = []

    def run(call) -> None:
        try:
            call()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(call,), daemon=True) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


@atexit.register
def _close_all() -> None:
    """Leave no node behind when a test run ends early (not after SIGKILL)."""
    for node in list(_live_nodes):
        try:
            node.close()
        except Exception:
            pass
