"""HTTP server: /livez, /readyz, /health, /metrics on http.server, and the cache that runs the checks at most once per period, however many requests arrive."""

from __future__ import annotations

import errno
import functools
import threading
import time

from .header import __version__, log
from .helpers import _number, _printable, _seconds, describe_error
from .formats import format_health_json, format_prometheus, mark_optional
from .checks import format_report


class _Cached:
    """One report, when it was taken, and its bodies, each rendered once on first use."""

    __slots__ = ("report", "taken", "bodies")

    def __init__(self, report, taken):
        self.report, self.taken, self.bodies = report, taken, {}

    def body(self, kind, details=True):
        """The report as `kind` (prometheus, health+json, json); without `details`, each
        reason and message reads "reason withheld"."""
        body = self.bodies.get((kind, details))
        if body is None:  # two threads may render it at once: the same bytes either way
            report = self.report if details else _withheld(self.report)
            text = (format_prometheus(report) if kind == "prometheus"
                    else format_health_json(report, pretty=False) if kind == "health+json"
                    else format_report(report, "json", pretty=False))
            body = self.bodies[kind, details] = text.encode("utf-8")
        return body


_WITHHELD = "reason withheld"  # Kubernetes' words for a reason it does not show


def _withheld(report):
    """A copy of `report` in which every failure reason and check message is withheld: what
    a check reached (host names, ports) and how it failed is not for every client."""
    return dict(report, failure={name: _WITHHELD for name in report.get("failure") or {}},
                checks={name: dict(check, message=_WITHHELD) if check.get("message") is not None
                        else check for name, check in (report.get("checks") or {}).items()})


_FIRST_REPORT_WAIT = 0.5  # seconds; under the kubelet's default probe timeout, 1 s


class _ReportCache:
    """The latest report of `produce()`, refreshed at most once per `max_age` seconds.

    get(wait=True) returns a report at most max_age old: the cached one, else the one
    of the run in progress (started now if none is), waiting at most `max_wait`
    seconds for it, then the stale one (None if there is none yet). get(wait=False)
    never waits: it starts a run if the report is stale and returns what it has.
    With start_background(), a thread refreshes every max_age seconds and get()
    never starts a run, nor waits but for the first report (at most
    _FIRST_REPORT_WAIT seconds). `runs` counts the runs started.
    """

    def __init__(self, produce, max_age, max_wait):
        self._produce, self.max_age, self.max_wait = produce, max_age, max_wait
        self._condition = threading.Condition()
        self._latest, self._running, self._stopped = None, False, threading.Event()
        self._background = None
        self.runs, self.error = 0, None

    def _fresh(self, now):
        return self._latest is not None and now - self._latest.taken < self.max_age

    def get(self, wait=True):
        with self._condition:
            now = time.monotonic()
            if self._background is not None:  # before its first report: a short wait
                deadline = now + min(self.max_wait, _FIRST_REPORT_WAIT) * wait
                while self._latest is None and time.monotonic() < deadline:
                    self._condition.wait(deadline - time.monotonic())
                return self._latest
            if self._fresh(now):
                return self._latest
            if not self._running:
                self._running = True
                self.runs += 1
                threading.Thread(target=self._refresh, name="pihace-serve-check",
                                 daemon=True).start()
            if wait:
                deadline = now + self.max_wait
                while self._running and not self._fresh(time.monotonic()):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._condition.wait(left)
            return self._latest

    def _refresh(self):
        try:
            cached = _Cached(self._produce(), time.monotonic())
            error = None
        except Exception as exc:  # a bug, or a report that cannot be made: said, not raised
            cached, error = None, describe_error(exc)
            log.error("the health report failed: %s", error)
        with self._condition:
            self._latest, self.error = cached or self._latest, error
            self._running = False
            self._condition.notify_all()

    def start_background(self):
        """Refresh in a thread of its own, every max_age seconds, until stop()."""
        def loop():
            while not self._stopped.is_set():
                began = time.monotonic()
                with self._condition:
                    self.runs += 1
                self._refresh()
                self._stopped.wait(max(0.0, self.max_age - (time.monotonic() - began)))

        with self._condition:
            if self._background is not None:
                return
            self._background = threading.Thread(target=loop, name="pihace-serve-refresh",
                                                daemon=True)
        self._background.start()

    def stop(self):
        self._stopped.set()


_MAX_REQUEST_LINE = 8192  # bytes; a longer request line is answered 414
_MAX_HEAD = 65536  # bytes of a whole request head, request line included; more is answered 431
_MAX_CONNECTIONS = 100  # open at once, by default; past that the idlest is closed, or 503
_LINGER_BYTES = 1 << 20  # read and dropped after an error answer, so that the client reads it
_TEXT_PLAIN = "text/plain; charset=utf-8"
_PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class _Reaper:
    """The open connections, at most `limit`: shuts each down whose request (or keep-alive
    wait) has gone on past its deadline, so that a client that sends or reads a byte now and
    then cannot hold a thread longer than that. One thread for all connections, asleep until
    the earliest deadline; the sockets stay blocking, so no read or write pays for a poll()
    of its own. A connection is idle from its accept, or the end of an answer, until its
    next request line is in; at the limit, the one idle longest makes room for a new one."""

    def __init__(self, limit=_MAX_CONNECTIONS):
        self.limit = limit
        self.deadlines = {}  # socket: time.monotonic() by which its request must be done
        self.idle = {}  # socket: since when it waits for a request line (busy ones absent)
        self.condition = threading.Condition()
        self.thread, self.closed = None, False

    def admit(self, sock, deadline):
        """Count a new connection in, making room by shutting the idlest one down when
        at the limit; False (not counted) when every connection is busy."""
        with self.condition:
            if len(self.deadlines) >= self.limit and not self.reap_idlest():
                return False
            self.deadlines[sock], self.idle[sock] = deadline, time.monotonic()
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, daemon=True,
                                               name="pihace-serve-reaper")
                self.thread.start()
            self.condition.notify()
            return True

    def reap_idlest(self):
        """Shut down the connection idle longest (its thread ends); False if none is idle."""
        with self.condition:
            if not self.idle:
                return False
            self._drop(min(self.idle, key=self.idle.get))
            return True

    def renew(self, sock, deadline, idle):
        with self.condition:
            if sock in self.deadlines:  # not reaped meanwhile
                self.deadlines[sock] = deadline
                if idle:
                    self.idle[sock] = time.monotonic()
                else:
                    self.idle.pop(sock, None)

    def remove(self, sock):
        with self.condition:
            self.deadlines.pop(sock, None)
            self.idle.pop(sock, None)

    def close(self):
        """Shut every connection down (their threads end), and the reaper with them."""
        with self.condition:
            self.closed = True
            self.condition.notify()

    def _drop(self, sock):
        import socket  # loaded already: the server's sockets are open

        del self.deadlines[sock]
        self.idle.pop(sock, None)
        try:
            sock.shutdown(socket.SHUT_RDWR)  # its blocked recv() ends
        except OSError:
            pass

    def _run(self):
        with self.condition:
            while True:
                now = time.monotonic()
                for sock, deadline in list(self.deadlines.items()):
                    if deadline <= now or self.closed:
                        self._drop(sock)
                if self.closed:
                    return
                self.condition.wait(min(self.deadlines.values()) - now
                                    if self.deadlines else None)


def _request_target(target):
    """(path, query) of an HTTP request's target: /path?query, or the absolute form
    http://host/path?query that a proxy sends."""
    path, _, query = target.partition("?")
    if "://" in path:
        path = "/" + path.split("://", 1)[1].partition("/")[2]
    return path, query.partition("#")[0]


@functools.lru_cache(maxsize=None)
def _http_classes():
    """(server class, handler class) on http.server, made on first use."""
    handler = _http_handler_class()
    return _http_server_class(handler), handler


# The client of the request that this thread answers, for responders that show reasons to
# loopback clients only: set by the handler before each respond(), whose interface it keeps.
_request_client = threading.local()


# Bodies up to this size are joined to their head and sent in one write; larger ones follow
# the head in a write of their own, so that concurrent requests for a shared rendering of
# megabytes do not each make a copy of it.
_JOINED_BODY = 1 << 16


class _HandlerBehaviour:
    """What pihace's request handler does on top of http.server's (mixed into it by
    _http_handler_class, which imports http.server only when a server starts): one answer
    per request, each within the server's deadlines."""

    protocol_version = "HTTP/1.1"  # keep-alive
    server_version = f"pihace/{__version__}"
    sys_version = ""
    default_request_version = "HTTP/1.0"  # an error answer to garbage has a status line
    disable_nagle_algorithm = True
    linger = False  # after an error answer: input the client may still send is dropped

    def finish(self):
        try:
            super().finish()
            if self.linger:
                self._drop_input()
        except OSError:
            pass
        finally:
            self.server.reaper.remove(self.connection)

    def _drop_input(self):
        """Half-close, then read what the client still sends (a bounded amount, for a
        bounded time) before the close: closing with unread input would send a reset
        that can destroy the error answer before the client reads it (RFC 9112, 9.6)."""
        import socket  # loaded already: the server's sockets are open

        self.connection.shutdown(socket.SHUT_WR)
        self.connection.settimeout(1.0)
        dropped = 0
        while dropped < _LINGER_BYTES:
            chunk = self.connection.recv(65536)
            if not chunk:
                return
            dropped += len(chunk)

    def handle_one_request(self):
        health, reaper = self.server.health, self.server.reaper
        reaper.renew(self.connection, time.monotonic() + health.request_timeout, idle=True)
        try:
            self.raw_requestline = self.rfile.readline(_MAX_REQUEST_LINE + 1)
            if len(self.raw_requestline) > _MAX_REQUEST_LINE:
                self.requestline = self.request_version = self.command = ""
                self.send_error(414, f"request line over {_MAX_REQUEST_LINE} bytes")
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            reaper.renew(self.connection, time.monotonic() + health.request_timeout,
                         idle=False)
            if not self._parse_head():
                self.close_connection = True
                return
            reaper.renew(self.connection, time.monotonic() + health.max_wait
                         + health.request_timeout, idle=False)  # the head is in: answer
            if self.command not in ("GET", "HEAD"):
                self.close_connection = self.linger = True  # a body we do not read
                self._answer(405, _TEXT_PLAIN, b"method not allowed: use GET or HEAD\n",
                             [("Allow", "GET, HEAD")])
                return
            body = _body_framing(self.headers)
            if body:  # its bytes would be read as the next request: refused, closed
                self.close_connection = self.linger = True
                self._answer(400, _TEXT_PLAIN, f"bad request: {body}\n".encode())
                return
            _request_client.address = self.client_address[0]
            status, content_type, body, headers = health.respond(
                *_request_target(self.path), self.headers.get("Accept", ""))
            self._answer(status, content_type, body, headers)
        except OSError as exc:  # reset, or gone: this connection is over
            log.debug("HTTP connection from %s ended: %s", self.client_address[0],
                      describe_error(exc))
            self.close_connection = True

    def _parse_head(self):
        """parse_request() on a head of at most _MAX_HEAD bytes (431 past that): the
        header lines are read here, within that budget, and parsed from memory."""
        budget, lines = _MAX_HEAD - len(self.raw_requestline), []
        while True:
            line = self.rfile.readline(budget + 1)
            budget -= len(line)
            if budget < 0:
                self.requestline, self.command = _printable(
                    str(self.raw_requestline, "latin-1").rstrip("\r\n")), ""
                self.request_version = ""
                self.send_error(431, f"request head over {_MAX_HEAD} bytes")
                return False
            lines.append(line)
            if line in (b"\r\n", b"\n", b""):
                break
        import io  # loaded already: http.server uses it

        socket_file, self.rfile = self.rfile, io.BytesIO(b"".join(lines))
        try:
            return self.parse_request()
        finally:
            self.rfile = socket_file

    def _answer(self, status, content_type, body, headers=()):
        """The whole answer in one write (no Nagle delay between head and body). A body that
        is not bytes is an iterable of bytes, sent as it is made (chunked; to an HTTP/1.0
        client, up to the close): a fleet's /metrics, tens of MB, is never held whole."""
        streamed = not isinstance(body, bytes)
        if streamed and self.request_version == "HTTP/1.0":
            self.close_connection = True  # its end is the close
        self.log_request(status, "-" if streamed else len(body))
        head = [f"HTTP/1.1 {status} {self.responses[status][0]}",
                f"Server: {self.server_version}", f"Date: {self.date_time_string()}",
                f"Content-Type: {content_type}",
                ("Transfer-Encoding: chunked" if not self.close_connection else None)
                if streamed else f"Content-Length: {len(body)}",
                "Cache-Control: no-store", "X-Content-Type-Options: nosniff",
                *(f"{name}: {value}" for name, value in headers)]
        if self.close_connection:
            head.append("Connection: close")
        head = "\r\n".join(line for line in head if line).encode("latin-1") + b"\r\n\r\n"
        if self.command == "HEAD":
            body = b""
        if streamed and body:
            self.wfile.write(head)
            for part in body:
                if self.close_connection:
                    self.wfile.write(part)
                elif part:
                    self.wfile.write(b"%x\r\n%b\r\n" % (len(part), part))
            if not self.close_connection:
                self.wfile.write(b"0\r\n\r\n")
        elif len(body) <= _JOINED_BODY:
            self.wfile.write(head + body)
        else:  # a large body: sent as it is, not copied per request
            self.wfile.write(head)
            self.wfile.write(body)

    def send_error(self, code, message=None, explain=None):
        self.linger = True  # http.server's own answers (400, 414, 431, 501): closing
        super().send_error(code, message, explain)

    def end_headers(self):  # the answers of http.server itself: 400, 414, 431, 501
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        super().end_headers()

    def log_request(self, code="-", size="-"):
        pass  # one line per request would cost more than the answer

    def log_message(self, format, *args):
        log.debug("HTTP %s: %s", self.client_address[0], _printable(format % args))


def _http_handler_class():
    """The request handler class: _HandlerBehaviour on http.server's."""
    import http.server  # here, not at the top: slow to import, and only servers need them

    class Handler(_HandlerBehaviour, http.server.BaseHTTPRequestHandler):
        pass

    return Handler


def _body_framing(headers):
    """Why a GET or HEAD request with these headers is refused, or "" when it has no body:
    any Transfer-Encoding, or a Content-Length other than one 0 (RFC 9112, 6.3)."""
    if headers.get_all("Transfer-Encoding"):
        return "a GET or HEAD request with Transfer-Encoding"
    lengths = headers.get_all("Content-Length") or []
    if len(lengths) > 1:
        return "more than one Content-Length"
    if lengths and (lengths[0].strip(" \t") == "" or lengths[0].strip(" \t").strip("0")):
        return "a GET or HEAD request with a body"
    return ""


# accept() fails with these when the process (or the system) has no file descriptor left
_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class _ServerBehaviour:
    """What pihace's HTTP server does on top of http.server's threading server (mixed into
    it by _http_server_class): IPv4 or IPv6, one _Reaper that counts the connections, at most
    the responder's `max_connections` (past that, the idlest is closed, or the new one
    answered 503 when none is idle), and no busy loop when file descriptors run out."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024  # many probes at once are not refused by the backlog

    def __init__(self, address, health, handler):
        import ipaddress  # here, not at the top: only servers need them
        import socket

        host = address[0].strip("[]")
        try:
            if ipaddress.ip_address(host).version == 6:
                self.address_family = socket.AF_INET6
        except ValueError:
            pass  # a host name: resolved by bind() as IPv4
        self.health = health
        self.reaper = _Reaper(getattr(health, "max_connections", _MAX_CONNECTIONS))
        self._warned = None  # when out of file descriptors was last logged
        super().__init__((host, address[1]), handler)

    def get_request(self):
        try:
            return super().get_request()
        except OSError as exc:
            if exc.errno in _OUT_OF_DESCRIPTORS:
                self._out_of_descriptors(exc)
            raise  # the serving loop drops it and polls again

    def _out_of_descriptors(self, exc):
        """accept() failed for want of a file descriptor: close the idlest connection
        and pause, rather than poll the listening socket again at once (a busy loop)."""
        now = time.monotonic()
        if self._warned is None or now - self._warned > 60:
            self._warned = now
            log.warning("cannot accept HTTP connections: %s (%d open); closing idle ones",
                        describe_error(exc), len(self.reaper.deadlines))
        time.sleep(0.01 if self.reaper.reap_idlest() else 0.1)

    def process_request(self, request, client_address):
        deadline = time.monotonic() + self.health.request_timeout
        if not self.reaper.admit(request, deadline):
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)  # a thread of its own
        except BaseException:
            self.reaper.remove(request)
            raise

    def _refuse(self, request):
        """503 to a connection past the limit, written without blocking, then closed."""
        body = b"too many connections: try again later\n"
        try:
            request.setblocking(False)
            request.send(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; "
                         b"charset=utf-8\r\nContent-Length: %d\r\nRetry-After: 1\r\n"
                         b"Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n"
                         b"Connection: close\r\n\r\n%s" % (len(body), body))
        except OSError:
            pass
        self.shutdown_request(request)

    def server_close(self):
        super().server_close()
        self.reaper.close()

    def server_bind(self):  # HTTPServer's, without its getfqdn(): a DNS lookup, maybe slow
        import socketserver  # loaded already: http.server uses it

        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


def _http_server_class(handler):
    """The threading server class of `handler`: _ServerBehaviour on http.server's."""
    import http.server  # here, not at the top: slow to import, and only servers need them

    class Server(_ServerBehaviour, http.server.ThreadingHTTPServer):
        def __init__(self, address, health):
            super().__init__(address, health, handler)

    return Server


class HealthServer:
    """Health endpoints over HTTP, on the standard library's http.server.

    As Kubernetes' own components serve them: ``/livez`` (alive: runs no check),
    ``/readyz`` and its alias ``/healthz`` (200 when every required check passed, 503
    otherwise), each with ``/<check>`` for one check, ``?exclude=<check>`` (repeatable)
    and ``?verbose`` (one ``[+]name ok`` or ``[-]name failed: reason`` line per check);
    ``/health`` and ``/healthcheck`` (the JSON report, or application/health+json when
    the request prefers it; 503 when Unavailable) and ``/metrics`` (Prometheus text
    format 0.0.4, always 200).

    `background` (the default): a thread runs the checks every `cache_seconds`, and no
    request waits for them (but for the first report, at most half a second), so that
    every answer fits the kubelet's 1 s probe timeout, a hung dependency included. With
    `background=False` the checks run when a request finds the report older than
    `cache_seconds`, at most once however many requests come: requests wait for the run
    in progress (at most `max_wait` seconds, then get the previous report); /livez and
    /metrics never wait. `partial_ready`: Partially Available is ready too.
    `optional`: names of checks whose failure cannot make the service Unavailable (see
    mark_optional). `show_details`: who sees the checks' reasons and messages (host
    names, ports, error texts), in /readyz?verbose and /health: "loopback" (clients on
    this machine; the default), "always" or "never"; others read "reason withheld".
    A client has `request_timeout` seconds to send each request (a keep-alive connection
    idle that long is closed). At most `max_connections` are open at once: past that the
    one idle longest is closed, or the new one answered 503 when all are busy.

    Binds at once (``port=0`` picks a free port: see `port`); serve with
    serve_forever(), or start() for a background thread, then stop(); or use it as a
    context manager. The default host, 127.0.0.1, answers this machine only: in a
    container or a Kubernetes pod, give host="0.0.0.0" (or "::").
    """

    def __init__(self, healthcheck, host="127.0.0.1", port=8000, *, cache_seconds=1.0,
                 background=True, partial_ready=False, optional=(), max_wait=10.0,
                 request_timeout=10.0, show_details="loopback",
                 max_connections=_MAX_CONNECTIONS):
        if not isinstance(host, str):
            raise ValueError(f"host must be a host name or an IP address, got {host!r}")
        _number("port", port, lambda v: 0 <= v < 65536, "an integer from 0 to 65535", int)
        if show_details not in _SHOW_DETAILS:
            raise ValueError(f"show_details must be one of {', '.join(_SHOW_DETAILS)}, got "
                             f"{_printable(repr(show_details))}")
        self.show_details = show_details
        self.max_connections = _number("max_connections", max_connections,
                                       lambda v: 0 < v <= 100000, "an integer from 1 to "
                                       "100000", int)
        self.healthcheck = healthcheck
        self.optional = tuple(optional)
        unknown = [name for name in self.optional if name not in healthcheck.checkers]
        if unknown:
            raise ValueError(f"no check called {_printable(', '.join(map(str, unknown)))} "
                             "to make optional")
        self.partial_ready = bool(partial_ready)
        self.request_timeout = _seconds("request_timeout", request_timeout)
        self.max_wait = _seconds("max_wait", max_wait)
        self._cache = _ReportCache(self._report, _seconds("cache_seconds", cache_seconds),
                                   self.max_wait)
        self._background = bool(background)
        self._httpd = _http_classes()[0]((host, port), self)
        self.host, self.port = self._httpd.server_address[:2]
        self._thread, self._serving, self._closed = None, threading.Lock(), False
        self._started = threading.Event()

    def __repr__(self):
        return f"<HealthServer {self.url}>"

    @property
    def url(self):
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    @property
    def runs(self):
        """How many times the checks have run."""
        return self._cache.runs

    @property
    def connections(self):
        """How many HTTP connections are open."""
        return len(self._httpd.reaper.deadlines)

    def _report(self):
        return mark_optional(self.healthcheck.check("dict"), self.optional)

    def serve_forever(self):
        """Answer requests until stop() is called (from another thread), or Ctrl-C: then
        one log line, the port closed, and serve_forever() returns."""
        interrupted = False
        with self._serving:
            if self._closed:
                return
            if self._background:
                self._cache.start_background()
            self._started.set()
            try:
                self._httpd.serve_forever()
            except KeyboardInterrupt:
                interrupted = True
        if interrupted:
            log.info("stopped serving %s: interrupted (Ctrl-C)", self.url)
            self.stop()

    def start(self):
        """serve_forever() in a daemon thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self.serve_forever, daemon=True,
                                            name=f"pihace-serve-{self.port}")
            self._thread.start()
            self._started.wait(5.0)  # so that stop() sees it serving, and shutdown() works
        return self

    def stop(self):
        """Stop serving and close the listening socket (connections in progress end
        with their request)."""
        self._cache.stop()
        self._closed = True
        if self._serving.locked():
            self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    def respond(self, path, query, accept):
        """(status, content type, body, [(header, value)]) for a GET of `path`."""
        from urllib.parse import parse_qsl, unquote  # loaded already, by http.server

        endpoint, slash, check = path[1:].partition("/")
        if endpoint in ("livez", "readyz", "healthz") and (check or not slash):
            params = parse_qsl(query, keep_blank_values=True)
            verbose = any(key == "verbose" for key, _ in params)
            excluded = [value for key, value in params if key == "exclude"]
            if endpoint == "livez":
                return _probe_answer("livez", {"ping": None}, unquote(check), excluded,
                                     verbose, False)
            cached = self._cache.get()
            if cached is None:
                return self._no_report()
            checks = {name: None if entry["status"] == "pass" else (
                entry.get("message"), bool(entry.get("optional")))
                for name, entry in (cached.report.get("checks") or {}).items()}
            return _probe_answer(endpoint, checks, unquote(check), excluded, verbose,
                                 self._shows_details(), self.partial_ready)
        if path == "/metrics":
            return self._metrics()
        if path in ("/health", "/healthcheck"):
            return self._health(_prefers_health_json(accept))
        if path == "/":
            return _service_page(self._cache.get(), self._shows_details())
        return 404, _TEXT_PLAIN, b"not found: try /livez, /readyz, /health or /metrics\n", []

    def _shows_details(self):
        """May the client of this request read the checks' reasons?"""
        return self.show_details == "always" or self.show_details == "loopback" and \
            _is_loopback(getattr(_request_client, "address", None))

    def _metrics(self):
        cached = self._cache.get(wait=False)  # never waits: a hung check cannot stall it
        body = cached.body("prometheus") if cached is not None else (
            "# HELP pihace_info who reports: pihace's version (no report yet)\n"
            "# TYPE pihace_info gauge\n"
            f'pihace_info{{pihace_version="{__version__}"}} 1\n').encode()
        return 200, _PROMETHEUS_TEXT, body, []

    def _no_report(self):
        reason = self._cache.error or "no health report yet: the checks are running"
        if self._cache.error and not self._shows_details():
            reason = f"no health report: {_WITHHELD}"
        return 503, _TEXT_PLAIN, f"{reason}\n".encode(), []

    def _health(self, health_json):
        cached = self._cache.get()
        if cached is None:
            return self._no_report()
        status = 503 if cached.report["status"] == "Unavailable" else 200
        details = self._shows_details()
        if health_json:
            return (status, "application/health+json", cached.body("health+json", details),
                    [("Vary", "Accept")])
        return status, "application/json", cached.body("json", details), [("Vary", "Accept")]


_SHOW_DETAILS = ("never", "loopback", "always")
_SERVICE_STYLE = (
    ":root{color-scheme:light dark;font:15px/1.4 system-ui,sans-serif}body{margin:16px auto;"
    "max-width:900px;padding:0 12px}table{border-collapse:collapse;width:100%}td,th{text-align:"
    "left;padding:4px 8px;border-bottom:1px solid #8884;overflow-wrap:anywhere}.pill{display:"
    "inline-block;min-width:64px;text-align:center;border-radius:10px;color:#fff;font-weight:600;"
    "font-size:13px}.pass{background:#1e7e34}.fail{background:#c62828}.other{background:#5c6670}"
    ".muted{color:#888}")


def _service_page(cached, details):
    """`pihace serve`'s / for people: the service's status, each check's state, and its
    reason where /readyz?verbose would show it (`details`). Its one style is allowed by hash."""
    import base64  # here, not at the top: only this page needs them
    import hashlib
    import html

    def escape(text):
        return html.escape(_printable(str(text)), quote=True)

    style = base64.b64encode(hashlib.sha256(_SERVICE_STYLE.encode()).digest()).decode()
    headers = [("Content-Security-Policy", f"default-src 'none'; style-src 'sha256-{style}'; "
                "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
               ("Referrer-Policy", "no-referrer")]
    report = cached.report if cached is not None else None
    rows = []
    for name, entry in ((report or {}).get("checks") or {}).items():
        passed = entry.get("status") == "pass"
        reason = "" if passed else (escape(entry.get("message") or "") if details
                                    else f'<span class="muted">{escape(_WITHHELD)}</span>')
        rows.append(f'<tr><td>{escape(name)}</td><td><span class="pill '
                    f'{"pass" if passed else "fail"}">{"ok" if passed else "failed"}</span>'
                    f'{" (optional)" if entry.get("optional") else ""}</td><td>{reason}</td></tr>')
    status = report["status"] if report else "no report yet"
    component = (report or {}).get("component") or {}
    title = escape(component.get("name") or "pihace serve")
    body = (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><meta http-equiv="refresh" '
            f'content="5"><title>{title}: {escape(status)}</title><style>{_SERVICE_STYLE}'
            f'</style></head><body><h1>{title}: <span class="pill '
            f'{"pass" if status == "Available" else "fail" if report else "other"}">'
            f'{escape(status)}</span></h1><table><thead><tr><th>check</th><th>state</th>'
            f'<th>reason</th></tr></thead><tbody>{"".join(rows)}</tbody></table>'
            f'<p class="muted">pihace {escape(__version__)} · <a href="/health">JSON</a> · '
            f'<a href="/readyz?verbose">readyz</a> · <a href="/metrics">metrics</a> · '
            f'refreshed every 5 s</p></body></html>\n')
    return (200 if report else 503), "text/html; charset=utf-8", body.encode(), headers


def _probe_answer(endpoint, checks, only, excluded, verbose, details, partial_ready=False):
    """The answer of /livez, /readyz or /healthz as Kubernetes words it. `checks`: name:
    None when it passed, else (reason, optional); `only`: one check's name, or "";
    `excluded`: names from ?exclude=; reasons are shown only when `verbose` and `details`.
    Ready: every required check not excluded passed (with `partial_ready`: one did, or
    there is none)."""
    if only:
        if only not in checks:
            return 404, _TEXT_PLAIN, f"not found: no check called {_printable(only)}\n" \
                .encode(), []
        checks, excluded = {only: checks[only]}, []
        checks[only] = checks[only] and (checks[only][0], False)  # its own result counts
    lines, required = [], []
    for name, failed in checks.items():
        shown = _printable(name)
        if name in excluded:
            lines.append(f"[+]{shown} excluded: ok")
        elif failed is None:
            lines.append(f"[+]{shown} ok")
            required.append(True)
        else:
            lines.append(f"[-]{shown} failed: "
                         f"{_printable(failed[0]) if verbose and details else _WITHHELD}")
            if not failed[1]:
                required.append(False)
    unmatched = [name for name in dict.fromkeys(excluded) if name not in checks]
    if unmatched:
        lines.append("warn: some health checks cannot be excluded: no matches for "
                     + ",".join(f'"{_printable(name)}"' for name in unmatched))
    ready = all(required) or (partial_ready and any(required))
    if ready and not verbose:
        return 200, _TEXT_PLAIN, b"ok\n", []
    lines.append(f"{endpoint} check {'passed' if ready else 'failed'}")
    return 200 if ready else 503, _TEXT_PLAIN, ("\n".join(lines) + "\n").encode(), []


def _prefers_health_json(accept):
    """Does an Accept header ask for application/health+json, named with a q above 0 and
    not below application/json's? (Without it, the JSON report: pihace 1.0.0's body.)"""
    named, health = _quality(accept, "application/health+json")
    return named == 2 and health > 0 and health >= _quality(accept, "application/json")[1]


def _quality(accept, media_type):
    """(how specifically, q) the Accept header `accept` names `media_type`: 2 by name, 1
    by type/*, 0 by */*, -1 not at all (q 0); the most specific range counts."""
    best = (-1, 0.0)
    for item in accept.split(","):
        media_range, *params = (part.strip() for part in item.split(";"))
        media_range = media_range.lower()
        specific = (2 if media_range == media_type else
                    1 if media_range == media_type.partition("/")[0] + "/*" else
                    0 if media_range == "*/*" else -1)
        if specific <= best[0]:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = min(1.0, max(0.0, float(value.strip())))
                except ValueError:
                    q = 0.0  # not a qvalue: not taken as acceptance
                if q != q:  # nan
                    q = 0.0
        best = (specific, q)
    return best


def _is_loopback(host):
    """Is `host` (a client's address) this machine: 127.0.0.0/8, ::1, or ::ffff:127.x?"""
    import ipaddress  # loaded already, by the server

    try:
        address = ipaddress.ip_address(str(host).partition("%")[0])
    except ValueError:
        return False
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback
