"""checkers: callables for HealthCheck.register() that never raise for what they check: True or (True, detail) when it is fine, else (False, reason). The AMQP checker comes after the transport it uses."""

from __future__ import annotations

import os
import time

from .header import __version__
from .helpers import _number, _printable, _seconds, _split_url, _text, _time_left, describe_error


def connect_tcp(address, timeout):
    """A connected TCP socket, trying each address of the host within one timeout
    (socket.create_connection gives each address the whole of it). Resolving
    the name is up to the system's resolver and its own timeouts."""
    import socket  # here, not at the top: slow to import, and only network checks need it

    host, port = address
    try:  # ASCII as bytes: a str would load the idna codec and unicodedata
        host = host.encode("ascii" if host.isascii() else "idna")
    except UnicodeError:
        raise OSError(f"invalid host name {host!r}") from None
    deadline, error = time.monotonic() + timeout, None
    for family, kind, proto, _, sockaddr in socket.getaddrinfo(host, port,
                                                               type=socket.SOCK_STREAM):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(left)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            error = exc
            sock.close()
    if error is None or isinstance(error, socket.timeout):
        raise socket.timeout("timed out")
    raise error


class _DeadlineSocket:
    """A connected socket for http.client whose every send and read gets what is left of one
    deadline: http.client's timeout is per read, so a server that trickles its headers or
    body a byte at a time would keep it going for ever."""

    def __init__(self, sock, deadline):
        self.sock, self.deadline = sock, deadline

    def time_left(self):
        self.sock.settimeout(_time_left(self.deadline, expired="timed out"))

    def sendall(self, data):
        self.time_left()
        self.sock.sendall(data)  # since Python 3.5 the timeout bounds the whole of sendall

    def makefile(self, mode="rb"):
        import io  # here, not at the top: only HTTP requests need it

        owner = self

        class Reader(io.RawIOBase):
            def readable(self):
                return True

            def readinto(self, buffer):
                owner.time_left()
                return owner.sock.recv_into(buffer)

        return io.BufferedReader(Reader())

    def close(self):
        pass  # http.client closes it when the response may still be read: _http_exchange will


_REDIRECTS = (301, 302, 303, 307, 308)


def _https_context(ssl):
    """The TLS settings of an https:// check: the system's CAs or, as requests (pihace
    1.0.0's HTTP client) does, only those of the file or folder that REQUESTS_CA_BUNDLE,
    else CURL_CA_BUNDLE, names."""
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if not bundle:
        return ssl.create_default_context()
    if os.path.isdir(bundle):
        return ssl.create_default_context(capath=bundle)
    return ssl.create_default_context(cafile=bundle)


def _http_exchange(url, path="", *, method="GET", headers=None, body=None, timeout=5.0,
                   follow=0, limit=1_000_000):
    """(status, reason phrase, headers, body) of one HTTP request to `url` (+ `path`), all
    within `timeout` seconds: connecting, sending, the status line, the headers and at most
    `limit` bytes of body. The user name and password of `url`, if any, go as HTTP basic
    authentication. Up to `follow` redirects are followed, and the Authorization header goes
    only to `url`'s own origin. The reason phrase is escaped and cut; network trouble raises
    what _http_errors() names."""
    import http.client  # here, not at the top: slow to import, and only HTTP needs them
    from urllib.parse import unquote, urljoin, urlsplit

    deadline = time.monotonic() + timeout
    parts = urlsplit(url)
    userinfo, at, netloc = parts.netloc.rpartition("@")
    headers = dict({"User-Agent": f"pihace/{__version__}"}, **(headers or {}))
    if at and "Authorization" not in headers:
        import base64  # here, not at the top: only URLs with credentials need it

        user, _, password = userinfo.partition(":")
        credentials = f"{unquote(user)}:{unquote(password)}".encode(
            "utf-8", "surrogateescape")  # bytes that argv could not decode, as they came
        headers["Authorization"] = f"Basic {base64.b64encode(credentials).decode()}"

    def origin(parts):
        return parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https"
                                                             else 80)

    home = origin(parts)
    parts = parts._replace(netloc=netloc, path=parts.path.rstrip("/") + path if path
                           else parts.path, fragment="")
    for hop in range(follow + 1):
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
        if not host.isascii():
            host.encode("idna")  # UnicodeError, naming the codec, for a name it refuses
        sock = connect_tcp((host, port), _time_left(deadline, at_least=0.001))
        try:
            if parts.scheme == "https":
                import ssl  # here, not at the top: only https:// needs it

                sock.settimeout(_time_left(deadline, at_least=0.001))
                sock = _https_context(ssl).wrap_socket(sock, server_hostname=host)
            connection = http.client.HTTPConnection(host, port)
            connection.sock = _DeadlineSocket(sock, deadline)
            connection.request(method, (parts.path or "/") + (f"?{parts.query}"
                                                               if parts.query else ""),
                               body, headers)
            response = connection.getresponse()
            data = response.read(limit) if limit else b""
            status, phrase, answer = response.status, response.reason, response.headers
        finally:
            sock.close()
        location = answer.get("Location") if status in _REDIRECTS and hop < follow else None
        target = urlsplit(urljoin(parts.geturl(), location.strip())) if location else None
        if target is None or target.scheme not in ("http", "https") or not target.hostname:
            return status, _printable(_text(phrase)), answer, data
        if origin(target) != home:  # credentials go to the origin they were given for
            headers.pop("Authorization", None)
        if status == 303:
            method, body = "GET", None
        parts = target._replace(netloc=target.netloc.rpartition("@")[2], fragment="")


def _http_errors():
    """What _http_exchange() can raise for network trouble (an `except` evaluates it only
    then): OSError, http.client's errors for what is not HTTP, UnicodeError for a host name
    the idna codec refuses."""
    import http.client  # here, not at the top: slow to import

    return OSError, http.client.HTTPException, UnicodeError


def _http_failure(exc):
    """A network error of _http_exchange() in one line, escaped and cut."""
    return describe_error(exc)


class TCP:
    """Passes when a TCP connection to host:port opens within `timeout` seconds."""

    def __init__(self, host, port, timeout=5):
        if not isinstance(host, str) or not host:
            raise ValueError(f"host must be a host name or an IP address, got {host!r}")
        self.host, self.timeout = host, _seconds("timeout", timeout)
        self.port = _number("port", port, lambda v: 0 < v < 65536, "an integer from 1 to 65535",
                            int)

    def __call__(self):
        where = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        try:
            connect_tcp((self.host, self.port), self.timeout).close()
        except OSError as exc:
            return False, f"cannot connect to {where}: {describe_error(exc)}"
        return True, f"connected to {where}"


class HTTP:
    """pihace 1.0.0's HTTP plugin: GET `url`; a 2xx or 3xx answer passes.

    Redirects are not followed (a 3xx is the service's answer), so the
    reason of a failure is the status of `url` itself, or what stopped it.
    A user name and password in `url` are sent as HTTP basic authentication
    (as requests and curl do) and kept out of `self.url` and every reason.
    """

    def __init__(self, url, timeout=5):
        parts = _split_url(url, "url")
        try:
            valid = parts.scheme in ("http", "https") and parts.hostname and parts.port != 0
        except ValueError:  # a bad port
            valid = False
        if not valid:  # the URL is not quoted: it may hold a password
            raise ValueError("url must be an http:// or https:// URL with a host and a valid port")
        self.timeout = _seconds("timeout", timeout)
        userinfo, at, host = parts.netloc.rpartition("@")
        self.url = parts._replace(netloc=host).geturl() if at else url
        self._url = url  # with its credentials, which _http_exchange sends as basic auth

    def __call__(self):
        try:
            status, phrase, _, _ = _http_exchange(self._url, timeout=self.timeout, limit=0)
        except _http_errors() as exc:  # UnicodeError: a host name the idna codec refuses
            return False, "GET failed: " + _http_failure(exc)
        return 200 <= status < 400, f"HTTP {status} {phrase}".rstrip()


class Disk:
    """Fails when the file system holding `path` has less than `min_free_percent` free."""

    def __init__(self, path, min_free_percent):
        if not isinstance(path, (str, bytes, os.PathLike)) or not os.fspath(path):
            raise ValueError(f"path must be a path, got {path!r}")
        self.path = os.fspath(path)
        self.min_free_percent = _number("min_free_percent", min_free_percent,
                                        lambda v: 0 <= v <= 100, "a percentage from 0 to 100")

    def __call__(self):
        import shutil  # here, not at the top: slow to import (see the imports)

        try:
            usage = shutil.disk_usage(self.path)
        except OSError as exc:
            return False, f"cannot read the free space of {self.path!r}: {describe_error(exc)}"
        free = 100.0 * usage.free / usage.total if usage.total else 0.0
        detail = f"{free:.1f}% free ({usage.free / 2 ** 30:.1f} GiB)"
        if free < self.min_free_percent:
            return False, f"{detail}, below {self.min_free_percent:g}%"
        return True, detail
