"""database checkers: MySQL, MongoDB (with its BSON and SCRAM), InfluxDB and Elasticsearch, spoken over their own protocols."""

from __future__ import annotations

import itertools
import os
import struct
import time

from .helpers import _printable, _seconds, _split_url, _text, _time_left, describe_error
from .checkers import _http_errors, _http_exchange, _http_failure, connect_tcp


def _url_parts(url, schemes, default_port, what):
    """(user, password, host, port, path) of a database URL, percent-decoded; a ValueError
    that never shows the user information when it cannot be read."""
    from urllib.parse import unquote  # here, not at the top: slow to import

    parts = _split_url(url, what)
    try:
        port = parts.port or default_port
        valid = parts.scheme in schemes and parts.hostname
    except ValueError:  # a bad port
        valid = False
    if not valid:
        raise ValueError(f"{what} must be a {schemes[0]}://user:password@host:port/... URL")
    return (unquote(parts.username or ""), unquote(parts.password or ""), parts.hostname, port,
            unquote(parts.path.lstrip("/")))


def _xor(left, right):
    return bytes(a ^ b for a, b in zip(left, right))


def mysql_native_password(password, scramble):
    """The login token of MySQL's mysql_native_password plugin:
    SHA1(password) XOR SHA1(scramble + SHA1(SHA1(password)))."""
    import hashlib  # here, not at the top: only database logins need it

    if not password:
        return b""
    stage1 = hashlib.sha1(password).digest()
    return _xor(stage1, hashlib.sha1(scramble + hashlib.sha1(stage1).digest()).digest())


def caching_sha2_password(password, scramble):
    """The fast-path token of MySQL 8's caching_sha2_password plugin:
    SHA256(password) XOR SHA256(SHA256(SHA256(password)) + scramble)."""
    import hashlib  # here, not at the top: only database logins need it

    if not password:
        return b""
    stage1 = hashlib.sha256(password).digest()
    return _xor(stage1, hashlib.sha256(hashlib.sha256(stage1).digest() + scramble).digest())


_MYSQL_LOGINS = {"mysql_native_password": mysql_native_password,
                 "caching_sha2_password": caching_sha2_password}
# CLIENT_LONG_PASSWORD, CLIENT_PROTOCOL_41, CLIENT_SECURE_CONNECTION, CLIENT_PLUGIN_AUTH
_MYSQL_CLIENT_FLAGS = 0x1 | 0x200 | 0x8000 | 0x80000
_MYSQL_CONNECT_WITH_DB = 0x8


class _MySQLRefused(Exception):
    """An ERR packet from the server: str() is "code (sqlstate): message", as
    mysql-connector-python, which pihace 1.0.0 used, shows it."""


class _NeedsDriver(Exception):
    """What the standard library cannot do (a login plugin that needs TLS or RSA)."""


class _MySQLSession:
    """Just enough of the MySQL client/server protocol to log in, ping and quit."""

    def __init__(self, sock, deadline):
        self.sock, self.deadline, self.seq, self.buffer = sock, deadline, 0, bytearray()

    def _time_left(self):
        """Seconds to the one deadline of the whole exchange; TimeoutError once it passed
        (a server that floods, or trickles a byte at a time, gets no more time)."""
        return _time_left(self.deadline, expired="timed out")

    def _recv(self, size):
        while len(self.buffer) < size:
            self.sock.settimeout(self._time_left())
            data = self.sock.recv(65536)
            if not data:
                raise OSError("the server closed the connection")
            self.buffer += data
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def read(self):
        head = self._recv(4)
        size, self.seq = head[0] | head[1] << 8 | head[2] << 16, (head[3] + 1) & 0xFF
        payload = self._recv(size)
        if payload[:1] == b"\xff":  # ERR: code, then "#" and a SQLSTATE from protocol 4.1 on
            code, = struct.unpack_from("<H", payload, 1)
            state, text = ((payload[4:9], payload[9:]) if payload[3:4] == b"#"
                           else (b"HY000", payload[3:]))
            raise _MySQLRefused(f"{code} ({state.decode('ascii', 'replace')}): "
                                f"{_text(text.decode('utf-8', 'replace'))}")
        return payload

    def write(self, payload):
        self.sock.settimeout(self._time_left())
        self.sock.sendall(struct.pack("<I", len(payload))[:3] + bytes([self.seq]) + payload)
        self.seq = (self.seq + 1) & 0xFF

    def login(self, user, password, database):
        """Read the greeting, answer it, and follow the server's login plugin to its OK;
        the server's version."""
        greeting = self.read()
        if greeting[:1] != b"\x0a":
            raise _MySQLRefused(f"2007 (HY000): protocol version {greeting[:1].hex()} of the "
                                "server is not 10: is this a MySQL server?")
        end = greeting.index(b"\0", 1)
        version, position = greeting[1:end].decode("utf-8", "replace"), end + 5
        scramble, position = greeting[position:position + 8], position + 9
        flags, plugin = struct.unpack_from("<H", greeting, position)[0], "mysql_native_password"
        position += 2
        if len(greeting) > position:
            _, _, high, length = struct.unpack_from("<BHHB", greeting, position)
            flags, position = flags | high << 16, position + 16
            if flags & 0x8000:  # the rest of the scramble, ending in a NUL
                more = max(13, length - 8)
                scramble += greeting[position:position + more].rstrip(b"\0")
                position += more
            if flags & 0x80000:
                plugin = greeting[position:].split(b"\0", 1)[0].decode("ascii", "replace")
        password = password.encode("utf-8")
        if plugin not in _MYSQL_LOGINS:  # ask for one we speak; the server may switch again
            plugin = "mysql_native_password"
        token = _MYSQL_LOGINS[plugin](password, scramble)
        self.write(struct.pack("<IIB23x", _MYSQL_CLIENT_FLAGS | (_MYSQL_CONNECT_WITH_DB
                                                                  if database else 0),
                               1 << 24, 45)  # max packet, utf8mb4
                   + user.encode("utf-8") + b"\0" + bytes([len(token)]) + token
                   + (database.encode("utf-8") + b"\0" if database else b"")
                   + plugin.encode("ascii") + b"\0")
        while True:
            packet = self.read()
            if packet[:1] == b"\x00":
                return version
            if packet[:1] == b"\xfe" and len(packet) > 1:  # switch to another login plugin
                plugin, _, data = packet[1:].partition(b"\0")
                plugin = plugin.decode("ascii", "replace")
                if plugin not in _MYSQL_LOGINS:
                    raise _NeedsDriver(f"the server asks for the {_printable(plugin)} login, "
                                       "which pihace does not speak")
                self.write(_MYSQL_LOGINS[plugin](password, data[:20]))
            elif packet[:2] == b"\x01\x03" and plugin == "caching_sha2_password":
                continue  # fast path: the server had the password cached; its OK follows
            elif packet[:2] == b"\x01\x04" and plugin == "caching_sha2_password":
                raise _NeedsDriver("caching_sha2_password asks for a full login, which needs "
                                   "TLS or RSA (the server's cache does not hold this password "
                                   "yet: one login with another client fills it)")
            else:
                raise _MySQLRefused(f"2027 (HY000): unexpected packet {packet[:8].hex()} "
                                    "during the login")

    def ping_and_quit(self):
        self.seq = 0
        self.write(b"\x0e")  # COM_PING
        self.read()
        self.seq = 0
        self.write(b"\x01")  # COM_QUIT: the server closes without logging an aborted client


class MySQL:
    """pihace 1.0.0's MySQL plugin: log in to a MySQL or MariaDB server and ping it.

    `dsn` is ``mysql://user:password@host:port/database`` (port 3306 and the
    database may be left out; user and password are percent-decoded). It speaks
    the protocol with the standard library: the mysql_native_password login,
    and caching_sha2_password's fast path (MySQL 8's default, when the server
    has the password cached). Another login (a full caching_sha2 login, which
    needs TLS or RSA; ed25519...) uses mysql-connector-python when it is
    installed, else fails with a reason that says so. Failure reasons read as
    mysql-connector-python's: "1045 (28000): Access denied for user ...".
    """

    def __init__(self, dsn, timeout=5):
        self.user, self._password, self.host, self.port, self.database = _url_parts(
            dsn, ("mysql", "mariadb"), 3306, "dsn")
        self.timeout = _seconds("timeout", timeout)
        self.dsn = dsn  # as pihace 1.0.0 keeps it

    def __repr__(self):
        return f"MySQL(mysql://{self.user}:***@{self.host}:{self.port}/{self.database})"

    def __call__(self):
        where = f"'{self.host}:{self.port}'"
        deadline = time.monotonic() + self.timeout  # one for all: connect, login, ping
        try:
            sock = connect_tcp((self.host, self.port), self.timeout)
        except OSError as exc:  # in mysql-connector-python's words, as pihace 1.0.0 gave them
            why = f"Errno {exc.errno}: {exc.strerror}" if exc.errno and exc.strerror \
                else describe_error(exc)
            return False, f"2003: Can't connect to MySQL server on {where} ({_printable(why)})"
        try:
            session = _MySQLSession(sock, deadline)
            session.login(self.user, self._password, self.database)
            session.ping_and_quit()
        except _MySQLRefused as exc:
            return False, _printable(exc)
        except _NeedsDriver as exc:
            return self._with_driver(str(exc))
        except (OSError, ValueError, IndexError, struct.error) as exc:  # cut short, or garbage
            return False, f"2013 (HY000): Lost connection to MySQL server at {where} ({describe_error(exc)})"
        finally:
            sock.close()
        return True  # as pihace 1.0.0's plugins pass: no detail

    def _with_driver(self, why):
        try:
            import mysql.connector  # noqa: the driver pihace 1.0.0 used, only when installed
        except ImportError:
            return False, f"{why}; install mysql-connector-python for this login"
        try:
            connection = mysql.connector.connect(
                host=self.host, port=self.port, user=self.user, password=self._password,
                database=self.database or None, connection_timeout=self.timeout)
            connection.close()
        except mysql.connector.Error as exc:
            return False, _printable(_text(exc))
        return True


# MongoDB: OP_MSG commands with a minimal BSON, enough for hello and ping.

_BSON_DEPTH = 32


def bson_encode(document, depth=0):
    """A dict as a BSON document: str keys; str, bool, int (32 or 64 bits), float, None,
    bytes, dict and list values. ValueError for what BSON cannot hold."""
    if depth > _BSON_DEPTH:
        raise ValueError("BSON nested too deep")
    if not isinstance(document, dict):
        raise ValueError(f"a BSON document is a dict, not {type(document).__name__}")
    body = bytearray()
    for key, value in document.items():
        if not isinstance(key, str):
            raise ValueError(f"a BSON key is a str, not {type(key).__name__}: {key!r}")
        name = key.encode("utf-8")
        if b"\0" in name:
            raise ValueError(f"a BSON key cannot hold a NUL: {key!r}")
        name += b"\0"
        if isinstance(value, bool):
            body += b"\x08" + name + (b"\x01" if value else b"\x00")
        elif isinstance(value, int):
            if not -2 ** 63 <= value < 2 ** 63:
                raise ValueError(f"{key!r} is an int of {value.bit_length()} bits: BSON holds 64")
            body += (b"\x10" + name + struct.pack("<i", value) if -2 ** 31 <= value < 2 ** 31
                     else b"\x12" + name + struct.pack("<q", value))
        elif isinstance(value, float):
            body += b"\x01" + name + struct.pack("<d", value)
        elif isinstance(value, str):
            data = value.encode("utf-8")
            body += b"\x02" + name + struct.pack("<i", len(data) + 1) + data + b"\0"
        elif value is None:
            body += b"\x0a" + name
        elif isinstance(value, bytes):
            body += b"\x05" + name + struct.pack("<iB", len(value), 0) + value
        elif isinstance(value, dict):
            body += b"\x03" + name + bson_encode(value, depth + 1)
        elif isinstance(value, (list, tuple)):
            body += b"\x04" + name + bson_encode({str(i): item for i, item in enumerate(value)},
                                                 depth + 1)
        else:
            raise ValueError(f"cannot encode {type(value).__name__} as BSON ({key!r})")
        if len(body) > 2 ** 31 - 6:
            raise ValueError("a BSON document holds at most 2 GiB")
    return struct.pack("<i", len(body) + 5) + bytes(body) + b"\0"


def _bson_take(data, position, count, end, what):
    """(data[position:position + count], position + count), or ValueError past `end`."""
    if count < 0 or position + count > end:
        raise ValueError(f"BSON {what} past the end of its document")
    return data[position:position + count], position + count


def _bson_cstring(data, position, end, what):
    """(the bytes up to the next NUL before `end`, the position after that NUL)."""
    nul = data.find(b"\0", position, end)
    if nul < 0:
        raise ValueError(f"BSON {what} without its NUL before the end of its document")
    return data[position:nul], nul + 1


def _bson_text(raw, what):
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"BSON {what} is not UTF-8") from None


def bson_decode(data, depth=0):
    """(document, its size) from the start of `data`: ObjectIds as hex strings, dates as
    milliseconds, other rare types as their bytes. ValueError for what is not BSON:
    cut short, a length that disagrees with the data, a missing NUL, an unknown type,
    text that is not UTF-8."""
    if depth > _BSON_DEPTH:
        raise ValueError("BSON nested too deep")
    data = data if isinstance(data, bytes) else bytes(data)
    if len(data) < 5:
        raise ValueError(f"BSON document cut short: {len(data)} bytes")
    size = int.from_bytes(data[:4], "little", signed=True)
    if size < 5 or size > len(data) or data[size - 1] != 0:
        raise ValueError(f"BSON document of {size} bytes in {len(data)}")
    end = size - 1  # the elements, before the document's closing NUL
    document, position = {}, 4
    fixed = {0x01: "<d", 0x09: "<q", 0x10: "<i", 0x11: "<Q", 0x12: "<q"}
    while position < end:
        kind = data[position]
        name, position = _bson_cstring(data, position + 1, end, "key")
        key = _bson_text(name, "key")
        if kind in fixed:
            raw, position = _bson_take(data, position, struct.calcsize(fixed[kind]), end, key)
            value, = struct.unpack(fixed[kind], raw)
        elif kind in (0x02, 0x0D, 0x0E):  # string, JavaScript code, symbol
            raw, position = _bson_take(data, position, 4, end, f"{key!r} length")
            length = int.from_bytes(raw, "little", signed=True)
            raw, position = _bson_take(data, position, length, end, f"string {key!r}")
            if length < 1 or raw[-1] != 0:
                raise ValueError(f"BSON string {key!r} without its NUL")
            value = _bson_text(raw[:-1], f"string {key!r}")
        elif kind in (0x03, 0x04):
            value, length = bson_decode(data[position:end], depth + 1)
            if kind == 0x04:
                value = list(value.values())
            position += length
        elif kind == 0x05:  # binary: length, subtype, bytes
            raw, position = _bson_take(data, position, 5, end, f"{key!r} length")
            value, position = _bson_take(data, position, int.from_bytes(raw[:4], "little",
                                                                        signed=True),
                                         end, f"binary {key!r}")
        elif kind == 0x07:
            raw, position = _bson_take(data, position, 12, end, f"ObjectId {key!r}")
            value = raw.hex()
        elif kind == 0x08:
            raw, position = _bson_take(data, position, 1, end, f"bool {key!r}")
            if raw not in (b"\x00", b"\x01"):
                raise ValueError(f"BSON bool {key!r} is neither 0 nor 1")
            value = raw == b"\x01"
        elif kind in (0x06, 0x0A, 0x7F, 0xFF):  # undefined, null, max key, min key
            value = None
        elif kind == 0x0B:  # regular expression: pattern and options, two C strings
            start = position
            _, position = _bson_cstring(data, position, end, f"regular expression {key!r}")
            _, position = _bson_cstring(data, position, end, f"regular expression {key!r}")
            value = data[start:position - 1]
        elif kind == 0x13:  # decimal128
            value, position = _bson_take(data, position, 16, end, f"decimal128 {key!r}")
        else:
            raise ValueError(f"unknown BSON type 0x{kind:02x} for {key!r}")
        document[key] = value
    return document, size


_OP_MSG = 2013


def scram_first(user, nonce):
    """(client-first-message-bare, client-first-message) of a SCRAM login (RFC 5802)."""
    name = user.replace("=", "=3D").replace(",", "=2C")
    bare = f"n={name},r={nonce}"
    return bare, "n,," + bare


_SCRAM_MAX_ITERATIONS = 10_000_000  # MongoDB's default is 15,000 (SHA-256), 10,000 (SHA-1)


def scram_final(password, hash_name, client_first_bare, server_first, client_nonce,
                deadline=None):
    """(client-final-message, the server signature to expect) of a SCRAM login (RFC 5802,
    7677): `password` as bytes, `hash_name` "sha1" or "sha256". ValueError, saying what is
    wrong, for a server-first-message that is not one, whose nonce does not extend ours, or
    whose iteration count is absurd or would keep PBKDF2 busy past `deadline` (monotonic)."""
    import base64  # here, not at the top: only logins need them
    import hashlib
    import hmac

    if not isinstance(server_first, str):
        raise ValueError("the server's SCRAM challenge is not text")
    fields = dict(item.split("=", 1) for item in server_first.split(",") if "=" in item)
    missing = [name for name in "rsi" if name not in fields]
    if missing:
        raise ValueError(f"the server's SCRAM challenge has no {'='.join(missing)}= field"
                         if len(missing) == 1 else "the server's SCRAM challenge lacks the "
                         f"fields {', '.join(name + '=' for name in missing)}")
    nonce, salt, iterations = fields["r"], fields["s"], fields["i"]
    if not client_nonce or not nonce.startswith(client_nonce) or nonce == client_nonce:
        raise ValueError("the server's SCRAM nonce does not extend ours")
    try:
        salt = base64.b64decode(salt, validate=True)
    except ValueError:  # binascii.Error
        raise ValueError("the server's SCRAM salt is not base64") from None
    if not (iterations.isascii() and iterations.isdigit()) or len(iterations) > 9 \
            or not 0 < int(iterations) <= _SCRAM_MAX_ITERATIONS:
        raise ValueError(f"the server's SCRAM iteration count {_text(iterations[:20])!r} is "
                         f"not a number from 1 to {_SCRAM_MAX_ITERATIONS:,}")
    iterations = int(iterations)
    if deadline is not None:  # time a small run, and refuse a count that would take too long
        sample = min(iterations, 2000)
        started = time.monotonic()
        hashlib.pbkdf2_hmac(hash_name, password, salt, sample)
        needed = (time.monotonic() - started) * iterations / sample
        if started + needed > deadline:
            raise ValueError(f"the server's SCRAM iteration count {iterations:,} would take "
                             f"about {needed:.1f}s, past the timeout")
    salted = hashlib.pbkdf2_hmac(hash_name, password, salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hash_name).digest()
    without_proof = f"c=biws,r={nonce}"
    message = f"{client_first_bare},{server_first},{without_proof}".encode("utf-8")
    signature = hmac.new(hashlib.new(hash_name, client_key).digest(), message, hash_name).digest()
    server_key = hmac.new(salted, b"Server Key", hash_name).digest()
    proof = base64.b64encode(_xor(client_key, signature)).decode()
    return (f"{without_proof},p={proof}",
            base64.b64encode(hmac.new(server_key, message, hash_name).digest()).decode())


class _MongoRefused(Exception):
    """The server answered a command with ok: 0."""


def _sasl_payload(reply, what):
    """The payload of a SASL reply as text; ValueError, saying so, when it has none."""
    payload = reply.get("payload")
    if not isinstance(payload, (bytes, str)):
        raise ValueError(f"{what}: the server's SASL reply has no payload")
    try:
        return payload if isinstance(payload, str) else payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{what}: the server's SASL payload is not UTF-8") from None


def mongo_op_msg(request_id, document):
    """An OP_MSG carrying one command document (a kind 0 section), no flags."""
    body = b"\0\0\0\0\x00" + bson_encode(document)
    return struct.pack("<iiii", 16 + len(body), request_id, 0, _OP_MSG) + body


class MongoDB:
    """pihace 1.0.0's MongoDB plugin: does the server answer a hello and a ping?

    `dsn` is a ``mongodb://[user:password@]host[:port][,host2...]/[database]``
    URL; each host is tried in turn within `timeout` (2 s, pihace 1.0.0's server
    selection timeout). It sends OP_MSG commands with a minimal BSON, standard
    library only, and logs in with SCRAM-SHA-256 or SCRAM-SHA-1 when the URL
    has a user (on ``authSource``, else the URL's database, else admin). What
    needs more (``mongodb+srv://``, a DNS SRV lookup; TLS; another
    ``authMechanism``) uses pymongo when it is installed, else fails with a
    reason that says so.
    """

    def __init__(self, dsn, timeout=2):
        from urllib.parse import unquote  # here, not at the top: slow to import

        self.timeout = _seconds("timeout", timeout)
        self.dsn = dsn
        parts = _split_url(dsn, "dsn")
        valid = parts.scheme in ("mongodb", "mongodb+srv")
        userinfo, _, hosts = parts.netloc.rpartition("@") if valid else ("", "", "")
        self.hosts = []
        for host in hosts.split(",") if valid else ():
            name, port = (host[1:].partition("]")[0], host.rpartition("]:")[2]) if host[:1] == "[" \
                else (host.partition(":")[0], host.partition(":")[2])
            if not name or port and not (port.isdigit() and 0 < int(port) < 65536):
                valid = False
                break
            self.hosts.append((unquote(name), int(port or 27017)))
        if not valid or not self.hosts:
            raise ValueError("dsn must be a mongodb://host[:port][,host...]/ URL")
        from urllib.parse import parse_qs  # here, not at the top: slow to import

        options = {key.lower(): values[-1] for key, values in parse_qs(parts.query).items()}
        user, colon, password = userinfo.partition(":")
        self.user = unquote(user) if userinfo else None
        self._password = unquote(password) if colon else ""
        self.auth_source = options.get("authsource") or unquote(parts.path.lstrip("/")) or "admin"
        self.mechanism = options.get("authmechanism")
        self._needs_driver = (
            "a mongodb+srv:// URL needs a DNS SRV lookup" if parts.scheme != "mongodb"
            else "TLS" if options.get("tls", options.get("ssl", "")).lower() == "true"
            else f"the {_printable(self.mechanism)} login" if self.mechanism not in (
                None, "SCRAM-SHA-1", "SCRAM-SHA-256") else None)

    def __repr__(self):
        return f"MongoDB({', '.join(f'{host}:{port}' for host, port in self.hosts)})"

    def __call__(self):
        if self._needs_driver:
            return self._with_driver()
        deadline, reasons = time.monotonic() + self.timeout, []
        for host, port in self.hosts:
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            try:
                self._hello_and_ping((host, port), deadline)
            except OSError as exc:
                reasons.append(f"{where}: {describe_error(exc)}")
                continue
            except (ValueError, IndexError, struct.error, _MongoRefused) as exc:
                reasons.append(f"{where}: {_printable(_text(exc))}")  # refused, or not MongoDB
                if time.monotonic() >= deadline:
                    break
                continue
            return True  # as pihace 1.0.0's plugins pass: no detail
        return False, "no MongoDB server answered: " + "; ".join(reasons)

    def _hello_and_ping(self, address, deadline):
        sock = connect_tcp(address, _time_left(deadline, at_least=0.001))
        ids = itertools.count(1)

        def command(document, what, database="admin"):  # the command's name comes first
            reply = self._command(sock, next(ids), dict(document, **{"$db": database}), deadline)
            if not reply.get("ok"):
                raise _MongoRefused(f"{what} refused: {_text(reply.get('errmsg'))} "
                                    f"(code {_text(reply.get('code'))[:20]})")
            return reply

        try:
            mechanisms = {} if self.user is None else {  # which SCRAM the user has
                "saslSupportedMechs": f"{self.auth_source}.{self.user}"}
            try:
                reply = command(dict(hello=1, **mechanisms), "hello")
            except _MongoRefused:  # before MongoDB 4.4.2: no hello
                reply = command(dict(isMaster=1, **mechanisms), "isMaster")
            if self.user is not None:
                self._login(command, reply, deadline)
            command({"ping": 1}, "ping")
            return reply
        finally:
            sock.close()

    def _login(self, command, hello, deadline):
        """SCRAM-SHA-256, or SCRAM-SHA-1 where the server or the URL says so."""
        import base64  # here, not at the top: only logins need them
        import hashlib

        mechanisms = hello.get("saslSupportedMechs", ["SCRAM-SHA-256"])
        wire_version = hello.get("maxWireVersion", 7)
        if not isinstance(mechanisms, list) or isinstance(wire_version, bool) \
                or not isinstance(wire_version, (int, float)):
            raise ValueError("not a MongoDB hello reply (saslSupportedMechs or maxWireVersion "
                             "of the wrong type)")
        mechanism = self.mechanism or ("SCRAM-SHA-1" if "SCRAM-SHA-256" not in mechanisms
                                       or wire_version < 7 else "SCRAM-SHA-256")
        if mechanism == "SCRAM-SHA-1":  # MongoDB's SCRAM-SHA-1 password is this digest
            password = hashlib.md5(f"{self.user}:mongo:{self._password}".encode("utf-8"))\
                .hexdigest().encode("ascii")
        else:  # SASLprep, as far as NFKC goes (it leaves ASCII as it is)
            import unicodedata  # here, not at the top: only SCRAM-SHA-256 needs it

            password = unicodedata.normalize("NFKC", self._password).encode("utf-8")
        nonce = base64.b64encode(os.urandom(24)).decode("ascii")
        bare, first = scram_first(self.user, nonce)
        what, source = f"{mechanism} login of {self.user!r}", self.auth_source
        start = command(dict(saslStart=1, mechanism=mechanism, payload=first.encode(),
                             autoAuthorize=1, options={"skipEmptyExchange": True}), what, source)
        conversation = start.get("conversationId")
        if isinstance(conversation, bool) or not isinstance(conversation, int):
            raise ValueError(f"{what}: the server's saslStart reply has no conversationId")
        final, signature = scram_final(password, "sha1" if mechanism == "SCRAM-SHA-1"
                                       else "sha256", bare, _sasl_payload(start, what),
                                       nonce, deadline)
        step = command(dict(saslContinue=1, conversationId=conversation,
                            payload=final.encode()), what, source)
        if f"v={signature}" not in _sasl_payload(step, what).split(","):
            raise ValueError("the server's SCRAM signature is wrong: not the server we asked")
        for _ in range(3):  # an empty exchange or two at most, then the server must be done
            if step.get("done") is True:
                return
            step = command(dict(saslContinue=1, conversationId=conversation,
                                payload=b""), what, source)
        if step.get("done") is not True:
            raise ValueError(f"{what}: the server's SCRAM conversation does not end")

    @staticmethod
    def _command(sock, request_id, document, deadline):
        def time_left():  # each send and read gets what is left, and none once it passed
            return _time_left(deadline, expired="timed out")

        sock.settimeout(time_left())
        sock.sendall(mongo_op_msg(request_id, document))
        data = bytearray()
        while True:
            if len(data) >= 4:
                length, = struct.unpack_from("<i", data)
                if not 21 <= length <= 48_000_000:
                    raise ValueError("not a MongoDB reply (bad message length)")
                if len(data) >= length:
                    break
            sock.settimeout(time_left())
            chunk = sock.recv(65536)
            if not chunk:
                raise OSError("the server closed the connection")
            data += chunk
        length, _, response_to, opcode = struct.unpack_from("<iiii", data)
        if opcode != _OP_MSG or response_to != request_id or data[20] != 0:
            raise ValueError(f"not a MongoDB reply to OP_MSG {request_id} (opcode {opcode})")
        return bson_decode(bytes(data[21:length]))[0]

    def _with_driver(self):
        try:
            import pymongo  # noqa: the driver pihace 1.0.0 used, only when installed
        except ImportError:
            return False, f"{self._needs_driver}, which pihace does not do: install pymongo for it"
        try:
            client = pymongo.MongoClient(self.dsn, serverSelectionTimeoutMS=int(self.timeout * 1000))
            try:
                client.server_info()
            finally:
                client.close()
        except pymongo.errors.PyMongoError as exc:
            return False, _printable(_text(exc))
        return True


# InfluxDB and Elasticsearch: one GET over HTTP.

def _http_json(url, path, headers, timeout):
    """(status, reason, headers, JSON body or None) of GET url+path within `timeout`,
    following redirects (credentials only to the same origin); the body is None when it is
    not JSON, or nested too deep for the json module."""
    import json  # here, not at the top: slow to import, and only these checkers need it

    status, phrase, answer, body = _http_exchange(
        url, path, headers=dict(headers, Accept="application/json"), timeout=timeout,
        follow=5)
    try:
        document = json.loads(body) if body else None
    except (ValueError, RecursionError):  # RecursionError: [[[[... a hundred thousand deep
        document = None
    return status, phrase, answer, document


def _http_url(url, what):
    """`url` checked as an http(s) URL with a host; its safe form (no user information)."""
    parts = _split_url(url, what)
    try:
        valid = parts.scheme in ("http", "https") and parts.hostname and parts.port != 0
    except ValueError:  # a bad port
        valid = False
    if not valid:
        raise ValueError(f"{what} must be an http:// or https:// URL with a host and a valid port")
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


class InfluxDB:
    """pihace 1.0.0's InfluxDB plugin: does the server report itself healthy?

    GET /health (InfluxDB 2.x and 1.8+): passes when its status is "pass"; on a
    server without it (InfluxDB 1.x before 1.8), GET /ping: passes on 204. The
    token, if any, goes as ``Authorization: Token ...``; `org` is kept for
    pihace 1.0.0's signature (the health endpoint needs none).
    """

    def __init__(self, url, token="", org="", timeout=5):
        self.safe_url = _http_url(url, "url")
        self.url, self.org, self.timeout = url, org, _seconds("timeout", timeout)
        self._headers = {"Authorization": f"Token {token}"} if token else {}

    def __repr__(self):
        return f"InfluxDB({self.safe_url!r})"

    def __call__(self):
        deadline = time.monotonic() + self.timeout  # one for both requests
        try:
            status, phrase, headers, body = _http_json(self.url, "/health", self._headers,
                                                       self.timeout)
            if status == 404:  # InfluxDB 1.x before 1.8
                status, phrase, headers, body = _http_json(
                    self.url, "/ping", self._headers, _time_left(deadline, at_least=0.001))
                if status == 204:
                    return True  # as pihace 1.0.0's plugins pass: no detail
                return False, f"InfluxDB health status: fail - /ping answered HTTP {status} {phrase}"
        except _http_errors() as exc:
            return False, f"InfluxDB health status: fail - {_http_failure(exc)} ({self.safe_url})"
        health = body if isinstance(body, dict) else {}
        if status == 200 and health.get("status") == "pass":
            return True
        detail = health.get("message") or f"HTTP {status} {phrase}"
        shown = _printable(_text(health.get("status", "fail")))
        return False, f"InfluxDB health status: {shown} - {_printable(_text(detail))}"


class ElasticSearch:
    """pihace 1.0.0's Elasticsearch plugin: GET /_cluster/health passes when the
    cluster is green or yellow. A user name and password in `es_url`, or
    ``basic_auth=(user, password)``, go as HTTP basic authentication and are
    never shown. ``url=`` is accepted for `es_url`, as pihace 1.0.0's
    documentation writes it."""

    def __init__(self, es_url=None, timeout=5, *, url=None, basic_auth=None):
        if (es_url is None) == (url is None):
            raise ValueError("give the cluster's URL once, as es_url (or url)")
        es_url = url if es_url is None else es_url
        self.safe_url = _http_url(es_url, "es_url")
        self.es_url, self.timeout = es_url, _seconds("timeout", timeout)
        self._headers = {}
        if basic_auth is not None:
            import base64  # here, not at the top: only credentials need it

            user, password = basic_auth
            self._headers["Authorization"] = "Basic " + base64.b64encode(
                f"{user}:{password}".encode("utf-8")).decode()

    def __repr__(self):
        return f"ElasticSearch({self.safe_url!r})"

    def __call__(self):
        try:
            status, phrase, _, body = _http_json(self.es_url, "/_cluster/health", self._headers,
                                                 self.timeout)
        except _http_errors() as exc:
            return False, f"cannot read the cluster health at {self.safe_url}: {_http_failure(exc)}"
        health = body if isinstance(body, dict) else {}
        if status != 200 or "status" not in health:
            error = health.get("error")
            reason = error.get("reason") if isinstance(error, dict) else error
            return False, f"Elasticsearch answered HTTP {status} {phrase}" + (
                f": {_printable(_text(reason))}" if reason else "")
        if health["status"] in ("green", "yellow"):
            return True  # as pihace 1.0.0's plugins pass: no detail
        return False, f"Elasticsearch health status: {_printable(_text(health['status']))}"
