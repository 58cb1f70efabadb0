"""transport: the AMQP client's only code that touches sockets, TLS and poll()."""

from __future__ import annotations

import collections
import math
import select
import sys
import time

from .header import __version__, log
from .errors import (
    ChannelClosed, ConnectionClosed, ConsumerCancelled, Interrupted, PihaceError, PublishError,
    RemoteProtocolError,
)
from .helpers import _printable, _seconds, _split_url, _time_left, describe_error
from .checkers import connect_tcp
from .amqp_wire import DEFAULT_CHANNEL_MAX, DEFAULT_FRAME_MAX, _METHOD_NAMES
from .amqp_protocol import (
    AMQPProtocol, Acked, ConnectionLost, Delivery, Nacked, Returned, _REPLIES, _REPLY_NAMES,
)


def _is_host_name(name):
    """Can `name` go out as a TLS server name (IDNA, no NUL)?"""
    try:
        return bool(name) and "\x00" not in name and bool(name.encode("idna"))
    except UnicodeError:
        return False


class AMQPParameters:
    """Where and how to connect, parsed from an amqp:// or amqps:// URL."""

    NUMBER_KEYS = {"heartbeat": (0, 65535), "connection_timeout": (1e-3, 1e6),
                   "frame_max": (8192, 2 ** 31), "channel_max": (1, 65535),
                   # pika's URLParameters keys (as pihace 1.0.0's URLs may hold them):
                   "connection_attempts": (1, 1000), "retry_delay": (0, 3600),
                   "socket_timeout": (1e-3, 1e6), "stack_timeout": (1e-3, 1e6),
                   "blocked_connection_timeout": (1e-3, 1e6)}
    # pika's other keys: accepted, with nothing to do here (one debug line says so)
    IGNORED_KEYS = ("client_properties", "locale", "ssl_options", "tcp_options")
    TLS_KEYS = ("cacertfile", "certfile", "keyfile", "keyfile_password", "verify",
                "server_name_indication")

    def __init__(self, url, what="amqp_url"):
        """`what`: the URL's name in errors, as the caller knows it ("--url", say)."""
        from urllib.parse import parse_qsl, unquote  # here: slow to import

        if not isinstance(url, str):
            raise TypeError(f"{what} must be a string, got {type(url).__name__}")
        parts = _split_url(url.strip(), what)
        if parts.scheme not in ("amqp", "amqps"):
            raise ValueError(f"{what} must start with amqp:// or amqps://, got "
                             f"{parts.scheme + '://' if parts.scheme else 'no scheme'}")
        self.tls = parts.scheme == "amqps"
        self.host = parts.hostname or "localhost"
        try:
            port = parts.port
        except ValueError:  # not a number, or out of range
            port = 0
        if port == 0:  # without an @, the "port" may be a password: amqp://user:password/
            shown = parts.netloc.rpartition("@")[2].rpartition(":")[2] if "@" in parts.netloc \
                else "(not shown: without a host it may be a password)"
            raise ValueError(f"{what} has a bad port: {shown!r}")
        self.port = port or (5671 if self.tls else 5672)
        self.username = unquote(parts.username) if parts.username else "guest"
        self.password_given = parts.password is not None
        self.password = unquote(parts.password) if self.password_given else "guest"
        self.vhost = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path) or "/"
        self.heartbeat = self.connection_timeout = self.frame_max = self.channel_max = None
        self.socket_timeout = self.stack_timeout = self.blocked_connection_timeout = None
        self.connection_attempts, self.retry_delay = 1, 2.0  # pika's default delay
        self.cacertfile = self.certfile = self.keyfile = self.server_name_indication = None
        self.keyfile_password = None  # for an encrypted keyfile; never asked for on a terminal
        self.verify = "verify_peer"
        self._ssl_context = None
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key in self.TLS_KEYS:
                if not self.tls:
                    raise ValueError(f"{what} query key {key} needs an amqps:// URL")
                if key == "verify" and value not in ("verify_peer", "verify_none"):
                    raise ValueError(f"{what} query key verify must be verify_peer or "
                                     f"verify_none, got {value!r}")
                setattr(self, key, value)
                continue
            if key in self.IGNORED_KEYS:
                log.debug("%s: query key %s (pika's) is accepted and not used", what, key)
                continue
            if key not in self.NUMBER_KEYS:
                raise ValueError(f"{what} has an unknown query key {_printable(repr(key))}; "
                                 "known keys: " + ", ".join(
                                     (*self.NUMBER_KEYS, *self.TLS_KEYS, *self.IGNORED_KEYS)))
            try:
                number = float(value) if key.endswith(("_timeout", "_delay")) else int(value)
            except ValueError:
                raise ValueError(f"{what} query key {key} must be a number, got {value!r}") \
                    from None
            low, high = self.NUMBER_KEYS[key]
            if not low <= number <= high:
                raise ValueError(f"{what} query key {key} must be between {low} and {high}, "
                                 f"got {value}")
            setattr(self, key, number)
        if self.keyfile and not self.certfile:
            raise ValueError(f"{what} has a keyfile but no certfile")
        if self.server_name_indication is not None and not _is_host_name(
                self.server_name_indication):
            raise ValueError(f"{what} query key server_name_indication must be a host name, "
                             f"got {_printable(repr(self.server_name_indication))}")

    def ssl_context(self):
        """The TLS settings of the URL's query (made once): verified by default."""
        if self._ssl_context is None:
            import ssl  # here, not at the top: slow to import, and only TLS users need it

            context = ssl.create_default_context(cafile=self.cacertfile)
            if self.verify == "verify_none":
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if self.certfile:
                self._load_client_certificate(context, ssl)
            self._ssl_context = context
        return self._ssl_context

    def _load_client_certificate(self, context, ssl):
        asked = []

        def password():  # OpenSSL asks only for an encrypted key: never on the terminal
            asked.append(True)
            return self.keyfile_password or ""

        try:
            context.load_cert_chain(self.certfile, self.keyfile, password=password)
        except ssl.SSLError:
            if not asked:
                raise
            key = self.keyfile or self.certfile
            raise ssl.SSLError(
                f"the key file {key!r} is encrypted: give its password as keyfile_password= "
                "in the URL's query, or pass an ssl_context" if self.keyfile_password is None
                else f"the key file {key!r} cannot be decrypted with its keyfile_password"
            ) from None

    @property
    def safe_url(self):
        """The URL with the password masked: safe to print and log."""
        from urllib.parse import quote  # here, not at the top: slow to import

        host = f"[{self.host}]" if ":" in self.host else self.host
        vhost = "" if self.vhost == "/" else quote(self.vhost, safe="")
        scheme = "amqps" if self.tls else "amqp"
        return f"{scheme}://{quote(self.username, safe='')}:***@{host}:{self.port}/{vhost}"

    def __repr__(self):
        return f"AMQPParameters({self.safe_url!r})"


def _client_properties(connection_name):
    return {
        "product": "pihace",
        "version": __version__,
        "platform": "Python %d.%d.%d" % sys.version_info[:3],
        "information": "https://pypi.org/project/pihace/",
        "connection_name": connection_name,
        "capabilities": {"publisher_confirms": True, "basic.nack": True,
                         "connection.blocked": True, "authentication_failure_close": True,
                         "consumer_cancel_notify": True},
    }


# what OpenSSL says when the server's first bytes are no TLS record (RabbitMQ's plain port
# answers a ClientHello with its AMQP protocol header)
_NOT_TLS = {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG",
            "UNKNOWN_PROTOCOL"}


def _wait_io(socks, writing, timeout, also_readable=None):
    """Wait until one of `socks` can be read (or written), or `also_readable` can be
    read: poll() where there is one, since select() fails past file descriptor
    1024. False when the time ran out (or only `also_readable` is ready)."""
    timeout = 0.0 if timeout < 0 else min(timeout, 1e6)
    if hasattr(select, "poll"):
        poller = select.poll()
        for sock in socks:
            poller.register(sock, select.POLLOUT if writing else select.POLLIN)
        if also_readable is not None:
            poller.register(also_readable, select.POLLIN)
        extra = also_readable.fileno() if also_readable is not None else None
        return any(fd != extra for fd, _ in poller.poll(math.ceil(timeout * 1000)))
    readers, writers = ([], list(socks)) if writing else (list(socks), [])
    ready = select.select(readers + ([also_readable] if also_readable is not None else []),
                          writers, [], timeout)
    return any(sock is not also_readable for sock in ready[0] + ready[1])


# A message to publish: encoded body and properties, and the id its confirm names.
_Message = collections.namedtuple("_Message", "body properties message_id exchange routing_key")

# Seconds between two looks at what the broker sent, during a burst of fire-and-forget
# publishes (glance()): a look is a poll() system call, which would otherwise cost as much as
# the publish itself.
_GLANCE_PERIOD = 0.001

# Seconds between two log lines about Connection.Blocked and Unblocked: a broker, or anyone in
# the middle of a plain amqp:// connection, may send thousands of them a second.
_BLOCKED_LOG_PERIOD = 5.0


class BlockingConnection:
    """An AMQPProtocol over a socket, with a deadline on every wait.

    Not thread-safe: AMQPPusher serialises its use, except for Wakeup.wait(),
    which only waits for the socket to become readable.

    `interrupt`, if set, is a Wakeup: each of its signals ends one wait for the
    broker at once with Interrupted (stop() uses it). A blocking TCP connect or
    TLS handshake is bounded by its deadline only.
    """

    def __init__(self, parameters, protocol, *, socket_factory=None, ssl_context=None,
                 clock=time.monotonic, interrupt=None):
        self.parameters, self.protocol = parameters, protocol
        self.socket_factory = socket_factory or connect_tcp
        self.ssl_context = ssl_context
        self.clock = clock
        self.interrupt = interrupt
        self.sock = None
        self._would_block = (BlockingIOError, InterruptedError)
        self._replies = {}  # channel -> the reply to its last synchronous method
        self._awaited = set()  # message ids whose confirms publish() waits for
        self._outcomes = {}  # message id -> (acked, reason), for publish() to collect
        self._deliveries = collections.deque()  # Delivery events, for deliveries() to collect
        self._blocked_changes = 0  # Blocked and Unblocked not logged yet
        self._blocked_since = None  # when the broker blocked publishing, while it does
        self._blocked_logged = None  # when the last line about them was
        self._last_received = clock()  # when the broker last sent anything
        self._poller = None  # a poll object watching the socket, for looks without waiting
        self._pending = None  # the TLS socket's pending(): bytes decrypted but not read yet
        self._first_bytes = b""  # the server's, up to 5: does it answer in HTTP?
        self._next_glance = -math.inf  # glance() looks again from then on

    @property
    def is_open(self):
        return self.sock is not None and self.protocol.state == "open"

    @property
    def blocked(self):
        """Why the broker blocks publishing (a resource alarm), or None."""
        return self.protocol.blocked

    @property
    def heartbeat(self):
        """The heartbeat period agreed with the broker, in seconds (0 or None: none)."""
        return self.protocol.heartbeat

    def quiet_for(self):
        """Seconds since the broker last sent anything (RabbitMQ sends a heartbeat every
        half period when it has nothing else to send)."""
        return self.clock() - self._last_received

    def channel_is_open(self, channel):
        return self.sock is not None and self.protocol.channel_is_open(channel)

    @property
    def mechanism(self):
        """The SASL mechanism it logged in with (PLAIN or EXTERNAL), once it has."""
        return self.protocol.mechanism

    def _time_left(self, deadline, doing):
        return _time_left(deadline, self.clock, expired=f"timed out {doing}")

    # -- opening and closing --------------------------------------------------

    def connect(self, deadline):
        """Open the socket, then the AMQP connection, within the deadline."""
        import socket  # only connections need it, and it is slow to import

        host, port = self.parameters.host, self.parameters.port
        where = f"{host}:{port}"
        try:
            left = self._time_left(deadline, f"connecting to {where}")
            if self.parameters.socket_timeout is not None:  # pika's bound for the TCP connect
                left = min(left, self.parameters.socket_timeout)
            sock = self.socket_factory((host, port), left)
        except socket.timeout:
            raise TimeoutError(f"timed out connecting to {where}") from None
        except ConnectionRefusedError:
            raise ConnectionRefusedError(f"connection refused by {where}: "
                                         "is the broker running on that port?") from None
        except socket.gaierror as exc:
            raise OSError(f"cannot resolve host {host!r}: {exc.strerror}") from None
        self.sock = sock  # abort() closes it, whatever fails from here
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.parameters.tls:
                import ssl  # here, not at the top: slow to import, and only TLS users need it

                # a non-blocking TLS socket says "try again" with these
                self._would_block += (ssl.SSLWantReadError, ssl.SSLWantWriteError)
                sock.settimeout(self._time_left(deadline, "during the TLS handshake"))
                try:
                    sock = (self.ssl_context or self.parameters.ssl_context()).wrap_socket(
                        sock, server_hostname=self.parameters.server_name_indication or host)
                except ssl.SSLError as exc:
                    if getattr(exc, "reason", None) not in _NOT_TLS:  # one of ours has none
                        raise
                    raise ssl.SSLError(f"the TLS handshake with {where} failed ({exc.reason}): "
                                       "amqps:// to a port that speaks plain AMQP? (use "
                                       "amqp://, or the TLS port, 5671)") from None
            sock.setblocking(False)  # every wait is a poll() with a deadline
            self.sock, self._poller = sock, None
            self._pending = getattr(sock, "pending", None)
            try:
                self.wait_for(lambda: self.protocol.is_open, deadline,
                              f"for the broker at {where} to open the connection")
            except (ConnectionResetError, TimeoutError) as exc:
                if self._first_bytes:
                    raise
                raise type(exc)(f"{exc}; {where} said nothing in answer to the AMQP protocol "
                                "header: is it an AMQP port? (an HTTP server, say, waits for a "
                                "request)") from None
        except BaseException:
            self.abort()
            raise

    def abort(self):
        """Drop the socket without the closing handshake."""
        if self._blocked_changes:  # the line owed about Blocked comes now, not never
            self._log_blocked(at_once=True)
        sock, self.sock, self._poller, self._pending = self.sock, None, None, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def close(self, deadline):
        """Connection.Close, then wait (until the deadline) for Close-Ok."""
        if self.sock is None:
            return
        try:
            self.protocol.close()
            self.send_pending(deadline)
            self.wait_for(lambda: self.protocol.state == "closed", deadline,
                          "for Connection.Close-Ok")
        except (PihaceError, OSError):
            pass
        finally:
            self.abort()

    # -- bytes and events -----------------------------------------------------

    def send_pending(self, deadline):
        """Send what the protocol has queued, all of it before the deadline."""
        if self.sock is None:  # aborted (by an error, or the broker's Close) meanwhile
            raise ConnectionResetError("the connection to the broker is closed")
        sock = self.sock
        data = self.protocol.data_to_send(self.clock())
        if not data:
            return
        try:
            try:
                sent = sock.send(data)  # the common case: it takes all of it at once
            except self._would_block:
                sent = 0
            if sent == len(data):
                return
            data = memoryview(data)[sent:]
            while data:
                # the socket's buffer is full: a blocked broker stops reading
                if not self._wait(True, self._time_left(deadline, "sending to the broker")):
                    raise TimeoutError("timed out sending to the broker "
                                       "(it stopped reading: blocked, or overloaded?)")
                try:
                    data = data[sock.send(data):]
                except self._would_block:
                    pass
        except BaseException:  # Ctrl-C included: a frame cut half-way breaks the stream
            self.abort()
            raise

    def wait_for(self, condition, deadline, waiting_for):
        """Read and handle broker frames until condition() is true."""
        while True:
            self._handle_events()
            if condition():
                return
            heartbeat_in = self._send_queued(deadline)
            wait = self._time_left(deadline, f"waiting {waiting_for}")
            self._receive(wait if heartbeat_in is None else min(wait, heartbeat_in))

    def keep_alive(self, send_deadline):
        """Handle what the broker has sent, then send a heartbeat if one is due, without
        waiting for the broker. The seconds until it needs calling again (a heartbeat is
        due, or a line about Blocked is owed to the log), or None."""
        # (a look first: it is taken before every publish, and mostly finds nothing)
        if (self._buffered() or self._readable_now()) and self._receive(0.0):
            while self._buffered():  # TLS may hold more decrypted bytes than one recv() took
                self._receive(0.0)
            self._handle_events()
        heartbeat_in = self.protocol.tick(self.clock())  # as _send_queued()
        self.send_pending(send_deadline)
        log_in = self._log_blocked() if self._blocked_changes else None
        if log_in is not None and (heartbeat_in is None or log_in < heartbeat_in):
            return log_in
        return heartbeat_in

    def glance(self, send_deadline):
        """keep_alive() before a fire-and-forget publish, done at most once per
        _GLANCE_PERIOD of the clock (and whenever TLS holds decrypted bytes): in a burst
        of publishes, a Close, Blocked or heartbeat from the broker is seen within a
        millisecond, without a poll() per message."""
        now = self.clock()
        if now < self._next_glance and not self._buffered():
            return
        self._next_glance = now + _GLANCE_PERIOD
        self.keep_alive(send_deadline)

    def _send_queued(self, deadline):
        """Send what is queued, with a heartbeat when one is due; the seconds until the
        next heartbeat is due, or None."""
        heartbeat_in = self.protocol.tick(self.clock())
        self.send_pending(deadline)
        return heartbeat_in

    def _receive(self, wait):
        """Wait up to `wait` seconds for the broker's bytes, and feed them in; were there any?"""
        if not (self._buffered() or self._wait(False, wait)):
            return False
        try:
            data = self.sock.recv(1 << 16)
        except self._would_block:  # TLS: only part of a record has come
            return False
        if len(self._first_bytes) < 5:
            self._first_bytes += data[:5 - len(self._first_bytes)]
            if self._first_bytes == b"HTTP/":  # an AMQP broker's first frame starts 01 00 00
                raise RemoteProtocolError(
                    f"the server at {self.parameters.host}:{self.parameters.port} answered "
                    "with HTTP, not AMQP: is the port right? (RabbitMQ takes AMQP on 5672, "
                    "and on 5671 with TLS)")
        self._last_received = self.clock()
        self.protocol.receive_data(data, self._last_received)
        return True

    def _wait(self, writing, timeout):
        """Wait until the socket can be read (or written); False when the time ran out.
        Interrupted when `interrupt` is signalled first."""
        interrupt = self.interrupt
        if timeout <= 0 and not writing:
            return self._readable_now()
        if interrupt is None or timeout <= 0:  # a look without waiting needs no interrupting
            return _wait_io([self.sock], writing, timeout)
        ready = _wait_io([self.sock], writing, timeout, also_readable=interrupt.sock)
        if interrupt.take_one():
            raise Interrupted("stopped while waiting for the broker")
        return ready

    def _readable_now(self):
        """Can the socket be read now (or has it failed)? A look without waiting, as one is
        taken before every publish: with one poll object kept for the socket's life."""
        poller = self._poller
        if poller is None:
            if not hasattr(select, "poll"):  # Windows
                return _wait_io([self.sock], False, 0.0)
            poller = self._poller = select.poll()
            poller.register(self.sock, select.POLLIN)
        return bool(poller.poll(0))

    def _buffered(self):
        """Does TLS hold bytes it already decrypted (which poll() cannot see)?"""
        pending = self._pending
        return pending is not None and bool(pending())

    def _handle_events(self):
        next_event, deliveries = self.protocol.next_event, self._deliveries
        while True:
            event = next_event()
            if type(event) is Delivery:  # the common case first: a consumer's backlog
                deliveries.append(event)
                continue
            if event is None:
                if self._blocked_changes:
                    self._log_blocked()
                return
            if isinstance(event, ConnectionLost):
                self.abort()
                raise ConnectionResetError("the broker closed the connection")
            if isinstance(event, Acked):  # or Nacked, or Returned
                self._settle(event)
                continue
            name, args = event.name, event.args
            if name in ("Connection.Close", "Channel.Close"):
                try:
                    self.send_pending(self.clock() + 1)  # the Close-Ok, if the socket takes it
                except OSError:
                    pass
                if name == "Connection.Close":
                    self.abort()
                error = ConnectionClosed if name == "Connection.Close" else ChannelClosed
                raise error(args["reply_code"], args["reply_text"], args["class_id"],
                            args["method_id"],
                            cause=_METHOD_NAMES.get((args["class_id"], args["method_id"])))
            if name == "Basic.Cancel":
                raise ConsumerCancelled(f"the broker cancelled consumer "
                                        f"{_printable(args['consumer_tag'])!r} (its queue was "
                                        "deleted, or its node went down)")
            if name in ("Connection.Blocked", "Connection.Unblocked"):
                self._blocked_changes += 1
                self._blocked_since = None if self.blocked is None else (
                    self._blocked_since or self.clock())
                self._log_blocked()
            elif name in _REPLY_NAMES:
                self._replies[event.channel] = event

    def _log_blocked(self, at_once=False):
        """Log the broker's Blocked and Unblocked: the first at once, then at most one line
        per _BLOCKED_LOG_PERIOD (sooner if `at_once`), which gives the state then and counts
        the changes since the last line. self.blocked stays exact. The seconds until a line
        is owed, or None."""
        now = self.clock()
        if self._blocked_logged is not None and not at_once:
            owed_in = self._blocked_logged + _BLOCKED_LOG_PERIOD - now
            if owed_in > 0:
                return owed_in
        more, self._blocked_changes = self._blocked_changes - 1, 0
        since = "" if not more else (f" (and {more:,} more change{'s' if more > 1 else ''} "
                                     f"in the last {now - self._blocked_logged:.1f} s)")
        self._blocked_logged = now
        if self.blocked is None:
            log.warning("broker unblocked publishing%s", since)
        else:
            log.warning("broker blocked publishing: %s%s", _printable(self.blocked), since)
        return None

    def _settle(self, event):
        """Keep the outcome of a message publish() waits for; a late one is dropped."""
        if event.message_id not in self._awaited:
            log.debug("dropped the late outcome of message %r: %r", event.message_id, event)
            return
        self._awaited.discard(event.message_id)
        if isinstance(event, Nacked):
            outcome = (False, "the broker refused the message (Basic.Nack)")
        elif isinstance(event, Returned):
            outcome = (True, "the broker could not route the message: " + _printable(
                f"{event.reply_text} (exchange {event.exchange!r}, routing key "
                f"{event.routing_key!r})"))
        else:
            outcome = (True, None)
        self._outcomes[event.message_id] = outcome

    # -- channels and publishing ----------------------------------------------

    def call(self, channel, name, deadline, **values):
        """Send a synchronous method (Queue.Declare ...) and wait for its reply."""
        self._replies.pop(channel, None)
        self.protocol.send_method(channel, name, **values)
        self.send_pending(deadline)
        self.wait_for(lambda: channel in self._replies, deadline, f"for {_REPLIES[name]}")
        return self._replies.pop(channel)

    def open_channel(self, channel, deadline, confirm):
        """Open a channel (in confirm mode if `confirm`) and wait until it is."""
        self.protocol.open_channel(channel)
        self.send_pending(deadline)
        self.wait_for(lambda: self.protocol.channel_is_open(channel), deadline,
                      "for Channel.Open-Ok")
        if confirm:
            self.call(channel, "Confirm.Select", deadline)

    def close_channel(self, channel, deadline):
        """Close a channel and wait until the broker has freed it."""
        self.protocol.close_channel(channel)
        self.send_pending(deadline)
        closed = lambda: channel not in self.protocol.channels  # noqa: E731
        try:
            self.wait_for(closed, deadline, "for Channel.Close-Ok")
        except ChannelClosed:  # the broker closed it at the same time: its Close-Ok follows
            self.wait_for(closed, deadline, "for Channel.Close-Ok")

    def publish(self, channel, messages, deadline, mandatory=False):
        """Publish `messages` (_Message) in order and, on a channel in confirm mode,
        wait for the broker's answer to each: pipelined, not one at a time.

        Returns {message_id: (acked, reason)}: (True, None) delivered (or sent,
        without confirms), (True, reason) returned as unroutable, (False, reason)
        nacked. Raises for connection and channel trouble, TimeoutError when the
        broker does not answer in time, and PublishError while it blocks publishers.
        """
        protocol = self.protocol
        if protocol.blocked is not None:
            self._check_blocked_timeout()
            raise PublishError(f"the broker blocks publishers ({self.blocked})")
        self._outcomes.clear()
        for index, message in enumerate(messages):
            tag = protocol.publish(channel, message.exchange, message.routing_key, message.body,
                                   message.properties, mandatory, message.message_id)
            if tag is not None:
                self._awaited.add(message.message_id)
            if index % 64 == 63:  # keep what is queued in memory small: one send per 64
                self.send_pending(deadline)
        try:
            self.send_pending(deadline)
            if self._awaited:
                self.wait_for(lambda: not self._awaited, deadline, "for the broker to confirm")
        except TimeoutError:
            if self.blocked is None:
                raise  # a broker that does not answer: the caller drops the connection
            self._check_blocked_timeout()
            # Blocked after we published: the connection stays, and will resume.
            raise PublishError(f"the broker blocks publishers ({self.blocked}); "
                               "not confirmed yet") from None
        finally:
            self._awaited.clear()  # what comes later for these messages is dropped
        outcomes, pop = {}, self._outcomes.pop
        for message in messages:
            outcomes[message.message_id] = pop(message.message_id, (True, None))
        return outcomes


    def _check_blocked_timeout(self):
        """TimeoutError (the caller drops the connection, as pika tears it down) once the
        broker has blocked publishing for longer than the URL's blocked_connection_timeout."""
        limit = self.parameters.blocked_connection_timeout
        if limit is not None and self._blocked_since is not None \
                and self.clock() - self._blocked_since >= limit:
            raise TimeoutError(f"the broker blocked publishing for more than {limit:g}s "
                               f"(blocked_connection_timeout): {self.blocked}")

    # -- consuming ------------------------------------------------------------

    def consume(self, channel, queue, deadline, *, prefetch=100, consumer_tag="", no_ack=False,
                exclusive=False, arguments=None, max_body_size=None):
        """Basic.Qos (prefetch_count, unless 0), then Basic.Consume on an open channel;
        waits for both replies and returns the consumer tag. Deliveries are then
        collected with deliveries(); a body over max_body_size bytes comes as None."""
        if prefetch:
            self.call(channel, "Basic.Qos", deadline, prefetch_count=prefetch)
        self._replies.pop(channel, None)
        self.protocol.consume(channel, queue, consumer_tag, no_ack=no_ack, exclusive=exclusive,
                              arguments=arguments, max_body_size=max_body_size)
        self.send_pending(deadline)
        self.wait_for(lambda: channel in self._replies, deadline, "for Basic.Consume-Ok")
        return self._replies.pop(channel).args["consumer_tag"]

    def cancel(self, channel, consumer_tag, deadline):
        """Basic.Cancel, and wait for its Basic.Cancel-Ok; what was delivered meanwhile
        is still returned by deliveries()."""
        self.call(channel, "Basic.Cancel", deadline, consumer_tag=consumer_tag)

    def deliveries(self, wait, send_deadline):
        """The deliveries that came (Delivery events, in order), waiting up to `wait`
        seconds for a first one; [] when none came. Heartbeats are sent meanwhile, each
        send bounded by `send_deadline`. Raises ConsumerCancelled when the broker cancels
        a consumer, Interrupted when `interrupt` is signalled."""
        self._handle_events()
        if not self._deliveries:
            heartbeat_in = self._send_queued(send_deadline)
            if self._receive(wait if heartbeat_in is None else min(wait, heartbeat_in)):
                while self._buffered():  # TLS may hold more decrypted bytes than one recv() took
                    self._receive(0.0)
                self._handle_events()
        deliveries = list(self._deliveries)
        self._deliveries.clear()
        return deliveries

    def ack(self, channel, delivery_tag, deadline, multiple=False):
        """Acknowledge a delivery (with `multiple`, every one up to it) and send it now."""
        self.protocol.ack(channel, delivery_tag, multiple)
        self.send_pending(deadline)


class Wakeup:
    """Lets stop(), from another thread or a signal handler, end a wait at once.

    wait() sleeps until the time is up, wake() is called, or the broker sends
    something; it holds no lock, so other threads may use the connection meanwhile.
    """

    def __init__(self):
        import socket  # only a push loop needs it, and it is slow to import

        self._reader, self._writer = socket.socketpair()
        for sock in (self._reader, self._writer):
            sock.setblocking(False)

    @property
    def sock(self):
        """What becomes readable on wake()."""
        return self._reader

    def wake(self):
        try:
            self._writer.send(b"\0")
        except OSError:  # its buffer is full (it is awake already), or it is closed
            pass

    def take_one(self):
        """Consume one wake(), if one is pending: was there one?"""
        try:
            return bool(self._reader.recv(1))
        except OSError:  # none pending
            return False

    def clear(self):
        """Forget the wake() calls not acted on yet."""
        try:
            while self._reader.recv(64):
                pass
        except OSError:  # nothing left to read
            pass

    def wait(self, seconds, connection=None):
        """Sleep up to `seconds`, until wake() or, given a connection whose received
        bytes were all handled (keep_alive), until the broker sends more."""
        sock = connection.sock if connection is not None else None
        try:
            _wait_io([self._reader] if sock is None else [self._reader, sock], False, seconds)
        except (OSError, ValueError):  # another thread closed the connection's socket
            pass
        self.clear()

    def close(self):
        self._reader.close()
        self._writer.close()


def open_connection(endpoints, deadline, *, timeout=10.0, heartbeat=None,
                    connection_name="pihace", ssl_context=None, socket_factory=None,
                    clock=time.monotonic, interrupt=None, default_heartbeat=60):
    """An open BlockingConnection to the first of `endpoints` (AMQPParameters of the
    nodes of one cluster, tried in order) that answers before the deadline.

    Each endpoint gets a fair share of the time left, and at most its URL's
    connection_timeout (else `timeout`): a dead node cannot use it all. The
    heartbeat is `heartbeat` if given, else the URL's, else `default_heartbeat`. Over TLS with
    a client certificate and no password, the login is SASL EXTERNAL when the
    broker offers it. `interrupt`: see BlockingConnection. Raises what the last
    endpoint failed with.
    """
    if not endpoints:
        raise ValueError("open_connection() needs at least one endpoint (AMQPParameters)")
    for left, parameters in zip(range(len(endpoints), 0, -1), endpoints):
        connection = _connect_with_attempts(
            parameters, left, deadline, timeout=timeout, heartbeat=heartbeat,
            connection_name=connection_name, ssl_context=ssl_context,
            socket_factory=socket_factory, clock=clock, interrupt=interrupt,
            default_heartbeat=default_heartbeat)
        if connection is None:
            log.info("trying %s", endpoints[-left + 1].safe_url)
            continue
        log.info("connected to %s", parameters.safe_url)
        if connection.mechanism == "EXTERNAL" and parameters.username != "guest":
            log.warning("the user name %r of %s is not used: with SASL EXTERNAL the broker "
                        "logs in as its TLS client certificate says", parameters.username,
                        parameters.safe_url)
        return connection


def _connect_with_attempts(parameters, left, deadline, *, timeout, heartbeat, connection_name,
                           ssl_context, socket_factory, clock, interrupt, default_heartbeat):
    """An open connection to one endpoint, tried up to its URL's connection_attempts times
    (retry_delay seconds apart, as pika); None when it failed and `left` endpoints (this
    one included) remain to try, else what it failed with is raised."""
    attempts = parameters.connection_attempts
    for attempt in range(1, attempts + 1):
        protocol = AMQPProtocol(
            parameters.username, parameters.password, parameters.vhost,
            heartbeat=heartbeat if heartbeat is not None else
            parameters.heartbeat if parameters.heartbeat is not None else default_heartbeat,
            frame_max=parameters.frame_max or DEFAULT_FRAME_MAX,
            channel_max=parameters.channel_max or DEFAULT_CHANNEL_MAX,
            client_properties=_client_properties(connection_name),
            mechanisms=("EXTERNAL", "PLAIN") if parameters.tls and not
            parameters.password_given and (parameters.certfile or ssl_context) else ("PLAIN",))
        connection = BlockingConnection(parameters, protocol, socket_factory=socket_factory,
                                        ssl_context=ssl_context, clock=clock, interrupt=interrupt)
        share = (deadline - clock()) / (left + attempts - attempt)
        bound = parameters.connection_timeout or parameters.stack_timeout or timeout
        try:
            connection.connect(clock() + min(share, bound))
            return connection
        except (PihaceError, OSError) as exc:
            last = attempt == attempts or deadline - clock() <= parameters.retry_delay
            if isinstance(exc, Interrupted) or last and left == 1:
                raise
            log.info("cannot use %s (%s)%s", parameters.safe_url,
                     describe_error(exc, parameters.safe_url),
                     "" if last else f"; attempt {attempt + 1} of {attempts} in "
                     f"{parameters.retry_delay:g}s")
            if last:
                return None
        _pause(parameters.retry_delay, interrupt)
    return None


def _pause(seconds, interrupt):
    """Wait `seconds` between two connection attempts; Interrupted when `interrupt` (a
    Wakeup) is signalled meanwhile."""
    if interrupt is None:
        time.sleep(seconds)
        return
    _wait_io([], False, seconds, also_readable=interrupt.sock)
    if interrupt.take_one():
        raise Interrupted("stopped while waiting to connect again")


def failover_order(endpoints, last=None):
    """The order in which to try the nodes of one cluster: random, so that a fleet
    spreads over them, with `last` (the node just lost, or None) tried last."""
    import random  # here, not at the top: slow to import, and only reconnecting needs it

    others = [parameters for parameters in endpoints if parameters is not last]
    random.shuffle(others)
    return others + [last] if last is not None and last in endpoints else others


class Backoff:
    """When to try again after failures, for the pusher and the watcher alike.

    The first retry comes at a random moment within `spread` seconds, so that
    devices that lost their broker together do not come back together; later
    ones wait 1, 2, 4 ... seconds (each between half and all of that), at most
    `maximum`. succeeded() starts over.
    """

    def __init__(self, spread, maximum=30.0):
        import random  # here, not at the top: slow to import, and only retrying needs it

        self.spread, self.maximum = min(spread, maximum), maximum
        self.failures = 0
        self._random = random.random

    def failed(self, spread=True):
        """Count a failure; the seconds to wait before the next attempt. With `spread`
        False (a failure that hit this client alone: a refused publish on a connection
        still open), there is no crowd to spread, and the first retry comes within 0.5 s."""
        self.failures += 1
        if self.failures == 1 and spread:
            return self.spread * self._random()
        return min(self.maximum, 0.5 * 2 ** (self.failures - 1)) * (0.5 + self._random() / 2)

    def succeeded(self):
        self.failures = 0


class AMQP:
    """A checker: passes when an AMQP connection (login and vhost included) opens to `url`.

    Opens and closes a connection per check; the reason never shows the password.
    """

    def __init__(self, url, timeout=5):
        try:
            self.parameters = AMQPParameters(url)
        except (TypeError, ValueError) as exc:
            raise ValueError(str(exc).replace("amqp_url", "url", 1)) from None
        self.url = self.safe_url = self.parameters.safe_url  # the password stays in parameters
        self.timeout = _seconds("timeout", timeout)

    def __call__(self):
        try:
            connection = open_connection([self.parameters], time.monotonic() + self.timeout,
                                         timeout=self.timeout, connection_name="pihace check")
        except (PihaceError, OSError) as exc:
            return False, describe_error(exc, self.safe_url)
        connection.close(time.monotonic() + min(self.timeout, 5.0))
        return True, f"connected to {self.safe_url}"
