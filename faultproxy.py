"""A fault-injecting TCP proxy for pihace's tests, and a Listener for scripted fake servers
(at the end of this file).

Test-only helper (standard library only); not part of the ``pihace`` module.
The proxy listens on 127.0.0.1 on a free port and forwards every connection to one
target, with a fault that can be switched at any time from any thread::

    with FaultProxy("127.0.0.1", node.port) as proxy:
        pusher = AMQPPusher(hc, proxy.url_for(node.url))
        proxy.set_mode("blackhole")           # silence, both ways
        proxy.set_mode("latency", 0.25)       # every chunk 250 ms late each way
        proxy.set_mode("refuse")              # new connections reset at once
        proxy.set_mode("pass")                # plain forwarding again
        proxy.bytes_to_target                 # what reached the broker

Modes:

``pass``
    Forward both ways as fast as the sockets allow.
``blackhole``
    New connections are accepted but nothing is read from them and no
    connection to the target is opened; open connections stop being read and
    written both ways (what is queued waits). Like a dropped link, and like
    TCP's retransmissions, queued data flows again once the mode changes.
``refuse``
    New connections are closed with a reset (RST) as soon as they are
    accepted; open connections go on. ``reset()`` resets the open ones.
``latency``
    Like ``pass``, but each chunk read is written ``latency`` seconds later,
    in order, per direction (the round trip grows by twice ``latency``).

A connection to the target that cannot be opened (nothing listening) resets
the client's connection. A reset from either side is passed on as a reset;
an end of stream (FIN) is passed on once what came before it was written.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import select
import socket
import struct
import threading
import time
import urllib.parse

__all__ = ["FaultProxy", "wait_until"]

MODES = ("pass", "blackhole", "refuse", "latency")
_CHUNK = 65536
_MAX_QUEUED = 1 << 20  # bytes waiting per direction before the source stops being read
_LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


def wait_until(condition, timeout: float = 5.0, interval: float = 0.005, what: str = "condition"):
    """Poll `condition()` until it returns something true, which is returned.

    Raises TimeoutError (naming `what`) after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout} s")
        time.sleep(interval)


def _reset(sock: socket.socket | None) -> None:
    """Close a socket with RST instead of FIN."""
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    except OSError:
        pass
    sock.close()


class _Pipe:
    """One direction of a link: what was read from `src`, waiting to be written to `dst`."""

    def __init__(self, src: socket.socket, dst: socket.socket | None) -> None:
        self.src, self.dst = src, dst
        self.queue: collections.deque[list] = collections.deque()  # [due, memoryview]
        self.queued = 0
        self.eof = False  # src sent FIN
        self.shut = False  # FIN passed on to dst

    def due_in(self, now: float) -> float | None:
        """Seconds until the first chunk may be written (0: now), None when empty."""
        return max(0.0, self.queue[0][0] - now) if self.queue else None


class _Link:
    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.to_target: _Pipe | None = None
        self.from_target: _Pipe | None = None

    def connect(self, address, timeout: float) -> None:
        upstream = socket.create_connection(address, timeout=timeout)
        upstream.setblocking(False)
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.upstream = upstream
        self.to_target = _Pipe(self.client, upstream)
        self.from_target = _Pipe(upstream, self.client)

    @property
    def pipes(self) -> tuple[_Pipe, ...]:
        return () if self.upstream is None else (self.to_target, self.from_target)

    def done(self) -> bool:
        return self.upstream is not None and all(pipe.shut for pipe in self.pipes)

    def close(self, reset: bool = False) -> None:
        for sock in (self.client, self.upstream):
            if sock is not None:
                _reset(sock) if reset else sock.close()


class FaultProxy:
    """A TCP proxy from 127.0.0.1:`port` to target_host:target_port with switchable faults.

    Counters (written by the proxy's thread, readable at any time):
    ``connections_accepted``; ``bytes_to_target`` and ``bytes_from_target``,
    the bytes actually written to the target and to clients.
    """

    def __init__(self, target_host: str, target_port: int, *, mode: str = "pass",
                 latency: float = 0.0, host: str = "127.0.0.1",
                 connect_timeout: float = 2.0) -> None:
        self.target = (target_host, int(target_port))
        self.connect_timeout = connect_timeout
        self._mode, self._latency = "pass", 0.0
        self.set_mode(mode, latency)
        self.connections_accepted = 0
        self.bytes_to_target = 0
        self.bytes_from_target = 0
        self._links: list[_Link] = []
        self._reset_requested = False
        self._stopping = False
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, 0))
        self._listener.listen(128)
        self._listener.setblocking(False)
        self.host, self.port = self._listener.getsockname()[:2]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread: threading.Thread | None = None

    # -- control

    def __repr__(self) -> str:
        return (f"<FaultProxy {self.host}:{self.port} -> {self.target[0]}:{self.target[1]} "
                f"mode={self.mode} latency={self._latency}>")

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def latency(self) -> float:
        """Delay per direction in ``latency`` mode, else 0."""
        return self._latency

    def set_mode(self, mode: str, latency: float | None = None) -> None:
        """Switch to `mode` ("pass", "blackhole", "refuse", "latency"); takes effect at once.

        ``latency`` is required with "latency" (seconds per direction, > 0)
        and refused with the other modes.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "latency":
            if latency is None or not latency > 0:
                raise ValueError("latency mode needs latency > 0 seconds")
        elif latency:
            raise ValueError(f"latency is for the latency mode, not {mode!r}")
        self._latency = float(latency) if mode == "latency" else 0.0
        self._mode = mode
        self._wake()

    def reset(self) -> None:
        """Reset (RST) every open connection, both sides; new ones follow the mode."""
        self._reset_requested = True
        self._wake()

    @property
    def active_connections(self) -> int:
        return len(self._links)

    def url_for(self, url: str) -> str:
        """`url` (amqp://user:pass@host:port/vhost?query) with this proxy's host and port."""
        parts = urllib.parse.urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@{self.host}:{self.port}" if userinfo else f"{self.host}:{self.port}"
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))

    # -- life cycle

    def start(self) -> FaultProxy:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"FaultProxy:{self.port}",
                                            daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread and close every socket (clients see a reset). Safe to call twice."""
        self._stopping = True
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError(f"{self!r}: its thread did not end within {timeout} s")
            self._thread = None
        else:
            self._shutdown()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _wake(self) -> None:
        wake_w = getattr(self, "_wake_w", None)
        if wake_w is None:
            return
        try:
            wake_w.send(b"x")
        except OSError:  # full (a wake-up is pending anyway) or closed
            pass

    def _shutdown(self) -> None:
        for link in self._links:
            link.close(reset=True)
        self._links = []
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()

    # -- the loop (the proxy's thread only)

    def _run(self) -> None:
        try:
            while not self._stopping:
                self._step()
        finally:
            self._shutdown()

    def _step(self) -> None:
        silent = self._mode == "blackhole"
        if self._reset_requested:
            self._reset_requested = False
            for link in self._links:
                link.close(reset=True)
            self._links = []
        if not silent:
            for link in [link for link in self._links if link.upstream is None]:
                self._connect(link)

        poller = select.poll()
        fds: dict[int, tuple] = {}

        def watch(sock, events, what):
            fd = sock.fileno()
            old_events, old_whats = fds.get(fd, (0, ()))
            fds[fd] = (old_events | events, old_whats + (what,))

        watch(self._listener, select.POLLIN, ("accept",))
        watch(self._wake_r, select.POLLIN, ("wake",))
        now = time.monotonic()
        timeout = None
        if not silent:
            for link in self._links:
                for pipe in link.pipes:
                    if not pipe.eof and pipe.queued < _MAX_QUEUED:
                        watch(pipe.src, select.POLLIN, ("read", link, pipe))
                    due = pipe.due_in(now)
                    if due == 0:
                        watch(pipe.dst, select.POLLOUT, ("write", link, pipe))
                    elif due is not None:
                        timeout = due if timeout is None else min(timeout, due)
        for fd, (events, _) in fds.items():
            poller.register(fd, events)
        ready = poller.poll(None if timeout is None else max(1, int(timeout * 1000 + 0.999)))

        for fd, events in ready:
            for what in fds[fd][1]:
                kind = what[0]
                if kind == "accept":
                    self._accept()
                elif kind == "wake":
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except OSError:
                        pass
                elif self._mode == "blackhole":  # switched while polling: silent from now on
                    continue
                elif what[1] in self._links:  # not closed by an earlier event of this round
                    if kind == "read" and events & (select.POLLIN | select.POLLHUP | select.POLLERR):
                        # the latency now, not when the poll began: set_mode() may have woken it
                        self._read(what[1], what[2], self._latency)
                    elif kind == "write" and events & (select.POLLOUT | select.POLLHUP | select.POLLERR):
                        self._write(what[1], what[2])

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ECONNABORTED):
                    return
                raise
            self.connections_accepted += 1
            if self._mode == "refuse":
                _reset(client)
                continue
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(client)
            self._links.append(link)
            if self._mode != "blackhole":
                self._connect(link)

    def _connect(self, link: _Link) -> None:
        try:
            link.connect(self.target, self.connect_timeout)
        except OSError:
            self._drop(link, reset=True)  # as the target did: refused, or no answer

    def _drop(self, link: _Link, reset: bool) -> None:
        link.close(reset)
        if link in self._links:
            self._links.remove(link)

    def _read(self, link: _Link, pipe: _Pipe, latency: float) -> None:
        try:
            data = pipe.src.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # reset: pass the reset on
            self._drop(link, reset=True)
            return
        if not data:
            pipe.eof = True
            self._finish(link, pipe)
            return
        pipe.queue.append([time.monotonic() + latency, memoryview(data)])
        pipe.queued += len(data)

    def _write(self, link: _Link, pipe: _Pipe) -> None:
        now = time.monotonic()
        while pipe.queue and pipe.queue[0][0] <= now:
            chunk = pipe.queue[0][1]
            try:
                sent = pipe.dst.send(chunk)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._drop(link, reset=True)
                return
            pipe.queued -= sent
            if pipe.dst is link.upstream:
                self.bytes_to_target += sent
            else:
                self.bytes_from_target += sent
            if sent < len(chunk):
                pipe.queue[0][1] = chunk[sent:]
                return
            pipe.queue.popleft()
        self._finish(link, pipe)

    def _finish(self, link: _Link, pipe: _Pipe) -> None:
        """Pass an end of stream on once everything before it was written."""
        if pipe.eof and not pipe.queue and not pipe.shut:
            try:
                pipe.dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            pipe.shut = True
        if link.done():
            self._drop(link, reset=False)


class Listener:
    """A loopback server for scripted fakes: serve(connection) runs for each client, in a
    thread of its own, and may raise OSError or EOFError when the client goes; over TLS when
    given a server-side `ssl_context`. close() stops accepting, shuts the open connections
    down and waits (up to 5 s each) for their threads."""

    def __init__(self, serve, ssl_context=None):
        self._serve_one, self._ssl_context = serve, ssl_context
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._lock, self._connections, self._threads = threading.Lock(), [], []
        self._start(self._accept)

    def _start(self, target, *args):
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept(self):
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self._connections.append(connection)
            self._start(self._serve, connection)

    def _serve(self, connection):
        with connection:
            try:
                if self._ssl_context is not None:  # a failed handshake is an OSError
                    connection = self._ssl_context.wrap_socket(connection, server_side=True)
                self._serve_one(connection)
            except (OSError, EOFError):
                pass

    def close(self):
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
        self.listener.close()
        with self._lock:
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
            threads = list(self._threads)
        for thread in threads:
            thread.join(5)
