"""HTTP server: /livez, /readyz, /health, /metrics on http.server, and the cache that runs the checks at most once per period, however many requests arrive."""

from __future__ import annotations

import functools
import threading
import time

from .header import __version__, log
from .helpers import _number, _printable, _seconds, describe_error
from .formats import format_health_json, format_prometheus, mark_optional, required_checks_passed
from .checks import format_report


class _Cached:
    """One report, when it was taken, and its bodies, each rendered once on first use."""

    __slots__ = ("report", "taken", "bodies")

    def __init__(self, report, taken):
        self.report, self.taken, self.bodies = report, taken, {}

    def body(self, kind):
        body = self.bodies.get(kind)
        if body is None:  # two threads may render it at once: the same bytes either way
            text = (format_prometheus(self.report) if kind == "prometheus"
                    else format_health_json(self.report, pretty=False) if kind == "health+json"
                    else format_report(self.report, "json", pretty=False))
            body = self.bodies[kind] = text.encode("utf-8")
        return body


class _ReportCache:
    """The latest report of `produce()`, refreshed at most once per `max_age` seconds.

    get(wait=True) returns a report at most max_age old: the cached one, else the one
    of the run in progress (started now if none is), waiting at most `max_wait`
    seconds for it, then the stale one (None if there is none yet). get(wait=False)
    never waits: it starts a run if the report is stale and returns what it has.
    With start_background(), a thread refreshes every max_age seconds and get()
    never starts a run nor waits. `runs` counts the runs started.
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
            if self._background is not None or self._fresh(now):
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
_TEXT_PLAIN = "text/plain; charset=utf-8"
_PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class _Reaper:
    """Shuts down each connection whose request (or keep-alive wait) has gone on past its
    deadline: a client that sends or reads a byte now and then cannot hold a thread longer
    than that. One thread for all connections, asleep until the earliest deadline; the
    sockets stay blocking, so no read or write pays for a poll() of its own."""

    def __init__(self):
        self.deadlines = {}  # socket: time.monotonic() by which its request must be done
        self.condition = threading.Condition()
        self.thread, self.closed = None, False

    def add(self, sock, deadline):
        with self.condition:
            self.deadlines[sock] = deadline
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, daemon=True,
                                               name="pihace-serve-reaper")
                self.thread.start()
            self.condition.notify()

    def renew(self, sock, deadline):
        self.deadlines[sock] = deadline  # one store per request, without the lock

    def remove(self, sock):
        with self.condition:
            self.deadlines.pop(sock, None)

    def close(self):
        """Shut every connection down (their threads end), and the reaper with them."""
        with self.condition:
            self.closed = True
            self.condition.notify()

    def _run(self):
        import socket  # loaded already: the server's sockets are open

        with self.condition:
            while True:
                now = time.monotonic()
                for sock, deadline in list(self.deadlines.items()):
                    if deadline <= now or self.closed:
                        del self.deadlines[sock]
                        try:
                            sock.shutdown(socket.SHUT_RDWR)  # its blocked recv() ends
                        except OSError:
                            pass
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


def _http_handler_class():
    """The request handler: one answer per request, each within the server's deadlines."""
    import http.server  # here, not at the top: slow to import, and only servers need them

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive
        server_version = f"pihace/{__version__}"
        sys_version = ""
        default_request_version = "HTTP/1.0"  # an error answer to garbage has a status line
        disable_nagle_algorithm = True

        def setup(self):
            super().setup()
            self.server.reaper.add(self.connection,
                                   time.monotonic() + self.server.health.request_timeout)

        def finish(self):
            self.server.reaper.remove(self.connection)
            super().finish()

        def handle_one_request(self):
            health = self.server.health
            self.server.reaper.renew(self.connection, time.monotonic() + health.request_timeout)
            try:
                self.raw_requestline = self.rfile.readline(_MAX_REQUEST_LINE + 1)
                if len(self.raw_requestline) > _MAX_REQUEST_LINE:
                    self.requestline = self.request_version = self.command = ""
                    self.send_error(414, f"request line over {_MAX_REQUEST_LINE} bytes")
                    return
                if not self.raw_requestline or not self.parse_request():
                    self.close_connection = True
                    return
                self.server.reaper.renew(self.connection, time.monotonic() + health.max_wait
                                         + health.request_timeout)  # the head is in: answer
                if self.command not in ("GET", "HEAD"):
                    self.close_connection = True  # a body we do not read may follow
                    self._answer(405, _TEXT_PLAIN, b"method not allowed: use GET or HEAD\n",
                                 [("Allow", "GET, HEAD")])
                    return
                status, content_type, body, headers = health.respond(
                    *_request_target(self.path), self.headers.get("Accept", ""))
                self._answer(status, content_type, body, headers)
            except OSError as exc:  # reset, or gone: this connection is over
                log.debug("HTTP connection from %s ended: %s", self.client_address[0],
                          describe_error(exc))
                self.close_connection = True

        def _answer(self, status, content_type, body, headers=()):
            """The whole answer in one write (no Nagle delay between head and body)."""
            self.log_request(status, len(body))
            head = [f"HTTP/1.1 {status} {self.responses[status][0]}",
                    f"Server: {self.server_version}", f"Date: {self.date_time_string()}",
                    f"Content-Type: {content_type}", f"Content-Length: {len(body)}",
                    "Cache-Control: no-store", *(f"{name}: {value}" for name, value in headers)]
            if self.close_connection:
                head.append("Connection: close")
            self.wfile.write("\r\n".join(head).encode("latin-1") + b"\r\n\r\n"
                             + (body if self.command != "HEAD" else b""))

        def end_headers(self):  # the answers of http.server itself: 400, 414, 431, 501
            self.send_header("Cache-Control", "no-store")
            super().end_headers()

        def log_request(self, code="-", size="-"):
            pass  # one line per request would cost more than the answer

        def log_message(self, format, *args):
            log.debug("HTTP %s: %s", self.client_address[0], _printable(format % args))

    return Handler


def _http_server_class(handler):
    """The threading server of `handler`, on IPv4 or IPv6, with one _Reaper."""
    import http.server  # here, not at the top: slow to import, and only servers need them
    import socket

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True
        block_on_close = False
        request_queue_size = 1024  # many probes at once are not refused by the backlog

        def __init__(self, address, health):
            import ipaddress

            host = address[0].strip("[]")
            try:
                if ipaddress.ip_address(host).version == 6:
                    self.address_family = socket.AF_INET6
            except ValueError:
                pass  # a host name: resolved by bind() as IPv4
            self.health, self.reaper = health, _Reaper()
            super().__init__((host, address[1]), handler)

        def server_close(self):
            super().server_close()
            self.reaper.close()

        def server_bind(self):  # HTTPServer's, without its getfqdn(): a DNS lookup, maybe slow
            http.server.socketserver.TCPServer.server_bind(self)
            self.server_name, self.server_port = self.server_address[:2]

    return Server


class HealthServer:
    """Health endpoints over HTTP, on the standard library's http.server.

    ``/livez`` (alive: runs no check), ``/readyz`` (200 when every required check passed,
    503 otherwise; ``?verbose`` lists the checks), ``/health`` and ``/healthcheck`` (the
    JSON report, or application/health+json when the request accepts it; 503 when
    Unavailable) and
    ``/metrics`` (Prometheus text format 0.0.4, always 200). The checks run at most
    once per `cache_seconds`, however many requests come: requests wait for the run in
    progress (at most `max_wait` seconds, then get the previous report), /livez and
    /metrics never wait. With `background=True` a thread runs the checks every
    `cache_seconds` and no request waits. `partial_ready`: Partially Available is
    ready too. `optional`: names of checks whose failure cannot make the service
    Unavailable (see mark_optional). A client has `request_timeout` seconds to send
    each request (a keep-alive connection idle that long is closed).

    Binds at once (``port=0`` picks a free port: see `port`); serve with
    serve_forever(), or start() for a background thread, then stop(); or use it as a
    context manager. The default host, 127.0.0.1, answers this machine only: in a
    container or a Kubernetes pod, give host="0.0.0.0" (or "::").
    """

    def __init__(self, healthcheck, host="127.0.0.1", port=8000, *, cache_seconds=1.0,
                 background=False, partial_ready=False, optional=(), max_wait=10.0,
                 request_timeout=10.0):
        if not isinstance(host, str):
            raise ValueError(f"host must be a host name or an IP address, got {host!r}")
        _number("port", port, lambda v: 0 <= v < 65536, "an integer from 0 to 65535", int)
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

    def _report(self):
        return mark_optional(self.healthcheck.check("dict"), self.optional)

    def serve_forever(self):
        """Answer requests until stop() is called (from another thread)."""
        with self._serving:
            if self._closed:
                return
            if self._background:
                self._cache.start_background()
            self._started.set()
            self._httpd.serve_forever()

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
        if path == "/livez":
            return 200, _TEXT_PLAIN, b"[+]ping ok\nlivez check passed\n" if _verbose(
                query) else b"ok\n", []
        if path == "/metrics":
            return self._metrics()
        if path == "/readyz":
            return self._readyz(_verbose(query))
        if path in ("/health", "/healthcheck"):
            return self._health("application/health+json" in accept)
        return 404, _TEXT_PLAIN, b"not found: try /livez, /readyz, /health or /metrics\n", []

    def _metrics(self):
        cached = self._cache.get(wait=False)  # never waits: a hung check cannot stall it
        body = cached.body("prometheus") if cached is not None else (
            "# HELP pihace_info who reports: pihace's version (no report yet)\n"
            "# TYPE pihace_info gauge\n"
            f'pihace_info{{pihace_version="{__version__}"}} 1\n').encode()
        return 200, _PROMETHEUS_TEXT, body, []

    def _no_report(self):
        reason = self._cache.error or "no health report yet: the checks are running"
        return 503, _TEXT_PLAIN, f"{reason}\n".encode(), []

    def _readyz(self, verbose):
        cached = self._cache.get()
        if cached is None:
            return self._no_report()
        report = cached.report
        ready = required_checks_passed(report) or (
            self.partial_ready and report["status"] == "Partially Available")
        if ready and not verbose:
            return 200, _TEXT_PLAIN, b"ok\n", []
        lines = [f"[+]{_printable(name)} ok" if check["status"] == "pass" else
                 f"[-]{_printable(name)} failed: {_printable(check.get('message'))}"
                 for name, check in (report.get("checks") or {}).items()]
        lines.append(f"readyz check {'passed' if ready else 'failed'}")
        return 200 if ready else 503, _TEXT_PLAIN, ("\n".join(lines) + "\n").encode(), []

    def _health(self, health_json):
        cached = self._cache.get()
        if cached is None:
            return self._no_report()
        status = 503 if cached.report["status"] == "Unavailable" else 200
        if health_json:
            return (status, "application/health+json", cached.body("health+json"),
                    [("Vary", "Accept")])
        return status, "application/json", cached.body("json"), [("Vary", "Accept")]


def _verbose(query):
    return any(part.partition("=")[0] == "verbose" for part in query.split("&"))
