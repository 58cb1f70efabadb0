"""pusher: AMQPPusher, and its outbox of reports not yet confirmed (in memory, or on disk too)."""

from __future__ import annotations

import binascii
import collections
import errno
import itertools
import math
import os
import stat
import struct
import threading
import time

from .header import log
from .errors import ChannelClosed, PihaceError, ProtocolError, PublishError
from .helpers import (
    _number, _printable, _reset_after_fork, _seconds, _text, _time_left, describe_error,
)
from .amqp_wire import (
    PropertiesTemplate, _Reader, _long, decode_properties, encode_shortstr,
)
from .checks import get_utc_timestamp
from .transport import Backoff, Wakeup, _Message
from .client import _AMQPClient


_BUSY = "timed out waiting for another thread's publish to finish"
_HOST = os.uname().nodename if hasattr(os, "uname") else os.environ.get("COMPUTERNAME", "")
_DROPPED = "dropped from a full outbox"
_PENDING = "not confirmed yet"  # the outcome of a report still in the outbox


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # POSIX: a symbolic link is refused, never followed
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO planted as a report must not block load()
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class _Spool:
    """The outbox on disk: one file per report in folder `path`, written before the
    report's first attempt and removed once it is confirmed, so that reports
    survive a crash, a SIGKILL or a power loss.

    A file is written whole under a temporary name, flushed to disk (fsync) and
    renamed: a report is either all there or not at all. A temporary file left by
    a crash, or a file that fails its checksum, is ignored (never a crash). Names
    are <sequence>-<message id>.report, so the oldest comes first; a lock file
    keeps a second process from using the same folder at the same time.

    Whoever may write to the folder may plant reports that go out with this
    pusher's credentials, or links that make it write where they choose. So the
    folder is made 0700 and its files 0600; a folder that another user owns, or
    that group or others may write to, is refused with a ValueError (as ssh and
    gpg refuse theirs); files are opened by the folder's descriptor, never
    through a symbolic link, and created only when new (O_EXCL).
    """

    MAGIC = b"pihace-report\x001\n"
    FIELDS = _Message._fields  # each stored as a 4-byte length and its bytes
    # (device, inode) of a folder -> names of delivered reports whose files could not be
    # removed (a folder gone read-only): not sent again by this process
    _delivered = {}

    def __init__(self, path):
        self.path = os.fspath(path)
        self._folder, self._identity = self._open_folder()
        try:
            self._lock_file = self._lock_folder()
        except BaseException:
            self._close_folder()
            raise
        self._names = {}  # message id -> its file's name
        self._sequence = itertools.count(1)
        self._removal_failed = False  # said once in the log

    def _open_folder(self):
        """(descriptor or None, identity) of the folder, made 0700 if missing; ValueError
        if it is not this user's alone."""
        os.makedirs(self.path, 0o700, exist_ok=True)
        directory = getattr(os, "O_DIRECTORY", None)
        if directory is None or os.open not in os.supports_dir_fd:  # Windows: by its path
            info = os.stat(self.path)
            return None, (info.st_dev, info.st_ino)
        folder = os.open(self.path, os.O_RDONLY | directory | _CLOEXEC)
        try:
            info = os.fstat(folder)
            problem = None
            if info.st_uid != os.geteuid():
                problem = (f"it belongs to another user (uid {info.st_uid}), not to this one "
                           f"(uid {os.geteuid()})")
            elif info.st_mode & 0o022:
                problem = (f"{'group and others' if info.st_mode & 0o002 else 'its group'} "
                           f"may write to it (mode {stat.S_IMODE(info.st_mode):04o})")
            if problem:
                raise ValueError(f"refused the spool folder {_printable(self.path)}: {problem}; "
                                 "use a folder that only this user may write to (mode 0700)")
            if os.fstatvfs(folder).f_flag & os.ST_RDONLY:  # an existing lock file opens anyway
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), self.path)
        except BaseException:
            os.close(folder)
            raise
        return folder, (info.st_dev, info.st_ino)

    def _close_folder(self):
        folder, self._folder = self._folder, None
        if folder is not None:
            os.close(folder)

    def _name(self, name):
        """How os functions given dir_fd=self._folder find the file `name`."""
        return name if self._folder is not None else os.path.join(self.path, name)

    def _open(self, name, flags):
        """A descriptor of the folder's file `name`, never through a symbolic link."""
        try:
            return os.open(self._name(name), flags | _NOFOLLOW | _CLOEXEC, 0o600,
                           dir_fd=self._folder)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a link: say so, not "too many levels"
                raise OSError(exc.errno, "a symbolic link, not followed",
                              os.path.join(self.path, name)) from None
            raise

    def _lock_folder(self):
        # read-only: flock() needs no more, and a folder can still be remounted read-only
        lock_file = os.fdopen(self._open("lock", os.O_RDONLY | os.O_CREAT), "rb")
        try:
            import fcntl  # POSIX only: elsewhere two processes must not share a folder
        except ImportError:
            return lock_file
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock_file.close()
            raise ValueError(f"the spool folder {self.path} is in use by another pusher "
                             "(each running pusher needs its own)") from None
        return lock_file

    def _ready(self):
        if self._lock_file.closed:  # the pusher was closed, and is used again
            self._folder, self._identity = self._open_folder()
            self._lock_file = self._lock_folder()

    def load(self):
        """The reports left by an earlier run, oldest first."""
        self._ready()
        delivered = self._delivered.get(self._identity, set())
        found = []
        for name in os.listdir(self.path if self._folder is None else self._folder):
            if name.endswith(".tmp") or name in delivered:  # a write cut short: the report
                self._discard(name)  # never counted as kept; or one delivered already
            elif name.endswith(".report"):
                sequence = name.partition("-")[0]
                if sequence.isdigit():
                    found.append((int(sequence), name))
        messages = []
        for sequence, name in sorted(found):
            try:
                with os.fdopen(self._open(name, os.O_RDONLY | _NONBLOCK), "rb") as file:
                    if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                        raise ValueError("not a regular file")
                    message = self._decode(file.read())
            except (OSError, ValueError) as exc:
                log.warning("ignored the spooled report %s: %s", name, _printable(str(exc)))
                try:  # kept for a person to look at, out of the way
                    os.replace(self._name(name), self._name(name + ".unreadable"),
                               src_dir_fd=self._folder, dst_dir_fd=self._folder)
                except OSError:
                    pass
                continue
            self._names[message.message_id] = name
            messages.append(message)
        self._sequence = itertools.count(max((sequence for sequence, _ in found), default=0) + 1)
        return messages

    def write(self, message):
        self._ready()
        name = f"{next(self._sequence):012d}-{message.message_id}.report"
        temporary = name + ".tmp"
        file = os.fdopen(self._open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "wb")
        try:
            with file:
                file.write(self._encode(message))
                file.flush()
                os.fsync(file.fileno())
            os.replace(self._name(temporary), self._name(name),
                       src_dir_fd=self._folder, dst_dir_fd=self._folder)
        except BaseException:
            self._discard(temporary)  # a full disk, say: no empty file left behind
            raise
        self._sync_folder()  # the rename itself survives a power loss
        self._names[message.message_id] = name

    def remove(self, message):
        """Remove a delivered report's file; one that cannot be removed (a folder gone
        read-only, say) is logged once, and not sent again by this process."""
        name = self._names.pop(message.message_id, None)
        if name is None:
            return
        try:
            self._ready()
            os.remove(self._name(name), dir_fd=self._folder)
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            self._delivered.setdefault(self._identity, set()).add(name)
            if not self._removal_failed:
                self._removal_failed = True
                log.warning("cannot remove delivered reports from %s (%s): this process does "
                            "not send them again; a later run may (with their message ids, "
                            "so that consumers can drop them)", _printable(self.path),
                            describe_error(exc))

    def _discard(self, name):
        try:
            os.remove(self._name(name), dir_fd=self._folder)
        except OSError:
            pass

    def _sync_folder(self):
        if self._folder is not None:
            os.fsync(self._folder)
            return
        try:
            folder = os.open(self.path, os.O_RDONLY)
        except OSError:  # Windows cannot open a folder: its renames are durable as they are
            return
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    def _encode(self, message):
        fields = [value.encode() if isinstance(value, str) else value for value in message]
        data = b"".join(struct.pack(">I", len(value)) + value for value in fields)
        return self.MAGIC + struct.pack(">I", binascii.crc32(data)) + data

    def _decode(self, data):
        """A _Message from a file's bytes; ValueError (or ProtocolError) if they are not one
        of ours, whole and unchanged: a file is never trusted to go on the wire unread."""
        head = len(self.MAGIC) + 4
        if not data.startswith(self.MAGIC) or len(data) < head:
            raise ValueError("not a pihace report file")
        (checksum,) = struct.unpack_from(">I", data, len(self.MAGIC))
        reader = _Reader(data, head)
        if binascii.crc32(memoryview(data)[head:]) != checksum:
            raise ValueError("its checksum does not match: the file is damaged")
        try:
            fields = {field: bytes(reader.take(reader.unpack(_long))) for field in self.FIELDS}
            message = _Message(**dict(fields, **{key: fields[key].decode() for key in (
                "message_id", "exchange", "routing_key")}))
            properties = _Reader(message.properties)
            message_id = decode_properties(properties).get("message_id")
        except ProtocolError:
            raise ValueError("it is cut short, or not a report") from None
        if reader.offset != len(data) or properties.offset != len(message.properties) or \
                message_id != message.message_id:
            raise ValueError("its parts do not fit together")
        return message

    def close(self):
        self._lock_file.close()
        self._close_folder()


class Outbox:
    """The reports waiting for the broker's confirm, oldest first.

    At most `size` of them: when it is full the oldest is dropped (and counted in
    `dropped`). With `path`, each report is also kept on disk (see _Spool) from
    before its first attempt until it is confirmed, and the reports an earlier
    run left there come first. Thread-safe; its lock is held briefly.
    """

    def __init__(self, size, path=None):
        self.size, self.path = size, path
        self.dropped = 0
        self._messages = collections.deque()
        self._lock = threading.Lock()
        self._outcomes = {}  # message id -> its outcome, for a push() that waits for it
        self._spool = None if path is None else self._open_spool(path)
        if self._spool is not None:
            for message in self._spool.load():
                self._append(message)
            if self._messages:
                log.info("%d report(s) from an earlier run wait in %s", len(self._messages),
                         self._spool.path)

    def _open_spool(self, path):
        """The _Spool in folder `path`; None, said once, when the folder is read-only (a
        failing SD card remounted read-only, say): the reports then wait in memory only."""
        try:
            return _Spool(path)
        except OSError as exc:
            if exc.errno != errno.EROFS:
                raise
        log.warning("the spool folder %s is read-only: reports wait in memory only (those "
                    "kept there wait until it can be written again)", _printable(os.fspath(path)))
        self.path = None
        return None

    def __len__(self):
        return len(self._messages)

    def __iter__(self):
        with self._lock:
            return iter(list(self._messages))

    def add(self, message, waited_for=False):
        """Append `message` (on disk first, with a path); `waited_for`: take_outcome()
        will be asked for it."""
        with self._lock:
            if self._spool is not None:
                try:
                    self._spool.write(message)
                except OSError as exc:  # a full disk, say: the report is still kept in memory
                    log.warning("cannot keep a report in %s (%s); it waits in memory only",
                                self._spool.path, describe_error(exc))
            if waited_for:
                self._outcomes[message.message_id] = _PENDING
            self._append(message)

    def _append(self, message):
        if len(self._messages) >= self.size:
            self._forget(self._messages.popleft(), _DROPPED)
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                log.warning("outbox full (%d reports): dropped the oldest, %d so far",
                            self.size, self.dropped)
        self._messages.append(message)

    def oldest(self, count):
        with self._lock:
            return list(itertools.islice(self._messages, count))

    def ids(self):
        with self._lock:
            return [message.message_id for message in self._messages]

    def settle(self, message, reason=None):
        """`message` needs no more attempts: confirmed (reason None), or unroutable."""
        with self._lock:
            if self._messages and self._messages[0] is message:
                self._messages.popleft()
            elif message in self._messages:  # behind one the broker refused
                self._messages.remove(message)
            self._forget(message, reason)  # even when dropped meanwhile: it did arrive

    def _forget(self, message, outcome):
        if message.message_id in self._outcomes:
            self._outcomes[message.message_id] = outcome
        if self._spool is not None:
            self._spool.remove(message)

    def take_outcome(self, message_id):
        """What became of a message added with `waited_for`, which this forgets (ask once):
        None when confirmed, a reason when dropped or unroutable, _PENDING while it waits."""
        with self._lock:
            return self._outcomes.pop(message_id, _PENDING)

    def after_fork(self):
        """In a forked child: the reports waiting are the parent's to deliver (new ones
        still go to the same folder, under other names)."""
        self._lock = threading.Lock()
        self._messages.clear()
        self._outcomes.clear()

    def close(self):
        if self._spool is not None:
            self._spool.close()


class _MaskedURL(str):
    """A URL as given (pihace 1.0.0's ``AMQPPusher.amqp_url``), shown with its password
    masked by repr(), so that a pusher in a log line or a traceback does not leak it."""

    def __new__(cls, url, safe_url):
        self = super().__new__(cls, url)
        self.safe_url = safe_url
        return self

    def __repr__(self):
        return repr(self.safe_url)


class AMQPPusher(_AMQPClient):
    """Publishes health reports to an AMQP 0-9-1 broker such as RabbitMQ.

    One connection, opened on first use and kept between pushes. By default
    each report goes to the durable queue `queue_name` through the default
    exchange, and push() returns True only once the broker confirmed it;
    otherwise (False, reason): push() and publish() never raise for broker or
    network trouble, and no operation waits longer than `timeout` seconds
    (`connect_timeout`, twice that by default, when it sets up a connection).

    Reports that could not be confirmed wait in a bounded outbox (buffer_size
    reports; the oldest is dropped when it is full), on disk too with
    `outbox_path`, and are delivered first, in order and with their original
    timestamps, once the broker is back. Delivery is at-least-once: a report
    whose confirm was lost on the way is sent again with the same message_id, so
    consumers can drop duplicates. `amqp_url` may be a list of URLs (nodes of one
    cluster), tried in a random order; then a connection about `max_connection_age`
    old (an hour by default) is replaced at the next report, which spreads a fleet
    again over the nodes after one came back.
    """

    interval = None  # seconds between reports while push_forever_in_loop runs

    def __init__(self, healthcheck=None, amqp_url="amqp://guest:guest@localhost:5672/",
                 queue_name="pihace.healthcheck", *, exchange="", exchange_type=None,
                 routing_key=None, declare=True, queue_arguments=None, confirm=True,
                 heartbeat=None, timeout=10.0, connect_timeout=None, buffer_size=1000,
                 outbox_path=None, max_connection_age=3600.0, connection_name=None,
                 ssl_context=None, socket_factory=None, clock=time.monotonic):
        if healthcheck is not None and not callable(getattr(healthcheck, "check", None)):
            raise TypeError("healthcheck must be a HealthCheck (or have a check() method), got "
                            f"{type(healthcheck).__name__}")
        name, version = (getattr(healthcheck, key, None)
                         for key in ("component_name", "component_version"))
        routing_key = queue_name if routing_key is None else routing_key
        super().__init__(
            amqp_url, {"queue_name": queue_name, "routing_key": routing_key},
            exchange=exchange, exchange_type=exchange_type, queue_arguments=queue_arguments,
            heartbeat=heartbeat, timeout=timeout,
            connection_name=connection_name if connection_name is not None else (
                " ".join(str(part) for part in (name, version) if part) or "pihace"),
            ssl_context=ssl_context, socket_factory=socket_factory)
        urls = [amqp_url] if isinstance(amqp_url, str) else list(amqp_url)
        masked = [_MaskedURL(url, endpoint.safe_url) for url, endpoint in zip(urls, self.endpoints)]
        self.amqp_url = masked[0] if isinstance(amqp_url, str) else masked  # pihace 1.0.0's name
        self.routing_key = routing_key
        _number("buffer_size", buffer_size, lambda v: v >= 1, "an integer >= 1", int)
        self.healthcheck, self.queue_name = healthcheck, queue_name
        self.declare, self.confirm = declare, confirm
        # opening a connection (TCP, TLS, AMQP, channel, declare) has its own bound, so that
        # a slow link whose set-up takes longer than one publish may still deliver
        self.connect_timeout = (2 * self.timeout if connect_timeout is None
                                else _seconds("connect_timeout", connect_timeout))
        self.max_connection_age = (None if max_connection_age is None or (
            type(max_connection_age) in (int, float) and max_connection_age == 0)  # never
            else _seconds("max_connection_age", max_connection_age))
        self.buffer_size = buffer_size
        self.outbox = Outbox(buffer_size, outbox_path)
        self._paused_until, self._pause_reason = 0.0, None  # maintenance it announces (pause())
        self._loop_report = None  # the newest report of a running loop (for its last word)
        self.clock = clock  # monotonic: deadlines and connection ages, never shown
        self._declared, self._connected_at, self._replace_after = False, 0.0, None
        self._lock = threading.RLock()  # held while the connection is in use
        self._new_message_ids()
        _reset_after_fork.add(self)
        self._fixed_properties = {"content_type": "application/json", "content_encoding": "utf-8",
                                  "delivery_mode": 2, "app_id": name and str(name)}
        self._properties = PropertiesTemplate(
            self._fixed_properties, varying=("headers", "message_id", "timestamp", "type"))
        # a message without headers, by its type: only its id and timestamp are encoded
        self._properties_of_kind = {}

    def __repr__(self):
        return (f"<AMQPPusher {self.parameters.safe_url} exchange={self.exchange!r} "
                f"routing_key={self.routing_key!r}>")

    def _new_message_ids(self):
        # unique message ids: a random prefix per pusher (and per process) and a counter
        self._message_ids = map(f"{os.urandom(8).hex()}-{{}}".format, itertools.count(1))

    def _after_fork(self):
        """In a forked child: never touch the parent's socket, reports or ids."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.abort()  # closes the child's copy of the socket: the parent's stays open
        self._lock = threading.RLock()
        self._new_message_ids()
        self.outbox.after_fork()
        self._wakeup = self._interrupt = None  # the parent's loop is not running here

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # -- the connection -------------------------------------------------------

    def _connect(self, deadline):
        """Connect to a node that answers: in a random order, the one lost last tried last
        (none on the first connection, nor to rebalance)."""
        connection = self._open_connection(deadline, self.connect_timeout, self.clock)
        self._declared = False
        self._connected_at = self.clock()
        if self.max_connection_age is not None and len(self.endpoints) > 1:
            import random  # here, not at the top: slow to import, and only connecting needs it

            # at a random point of its last tenth, so that connections opened together (a
            # fleet that failed over) are not replaced together
            self._replace_after = self.max_connection_age * random.uniform(0.9, 1.0)
        self._wake_loop()  # a loop sleeping without a connection must keep this one alive
        return connection

    def _ready(self, deadline, setup_deadline):
        """An open connection and channel, with the destination declared, and the
        deadline of what follows: `deadline` on a connection that was ready, else the
        later `setup_deadline` (a slow link may take longer to set up than to publish)."""
        connection = self._connection
        if connection is not None and connection.is_open:
            try:  # notice a Close, or a dead socket, first (in a burst of fire-and-forget
                # publishes, one look per millisecond)
                if self.confirm:
                    connection.keep_alive(deadline)
                else:
                    connection.glance(deadline)
            except (PihaceError, OSError) as exc:
                log.warning("connection lost, opening a new one: %s", self._handle_failure(exc))
                connection = self._connection  # still there after a channel was closed
        if connection is not None and self.max_connection_age is not None and self._too_old():
            log.info("replacing the connection to %s after %.0fs, to spread over the nodes",
                     self.parameters.safe_url, self.clock() - self._connected_at)
            self._rebalancing = True
            self._close_connection()
            connection = None
        ready = connection is not None and connection.is_open and self._declared and \
            connection.channel_is_open(self._channel)
        if ready:
            return connection, deadline
        setup_deadline = max(deadline, setup_deadline)
        if connection is None or not connection.is_open:
            self._drop()
            connection = self._connect(setup_deadline)
        if not connection.channel_is_open(self._channel):
            connection.open_channel(self._channel, setup_deadline, self.confirm)
        if self.declare and not self._declared:
            self._declare_exchange(connection, setup_deadline)
            if not self.exchange:
                self._declare_queue(connection, setup_deadline, self.queue_name)
        self._declared = True
        return connection, setup_deadline

    def _too_old(self):
        return (self._replace_after is not None  # set on connecting, with several nodes
                and self.clock() - self._connected_at >= self._replace_after)

    def _drop(self):
        if self._connection is not None:
            self._connection.abort()
            self._wake_loop()  # its poll() still holds the socket open
        self._connection = None

    @property
    def dropped(self):
        """How many reports were dropped from a full outbox."""
        return self.outbox.dropped

    @property
    def blocked(self):
        """Why the broker blocks publishing (a resource alarm), or None."""
        connection = self._connection
        return connection.blocked if connection is not None else None

    def close(self):
        """Close the connection cleanly (bounded wait); safe to call again. With
        `outbox_path`, the reports still waiting stay on disk for the next run."""
        with self._lock:
            self._close_connection()
            self.outbox.close()

    def _close_connection(self):
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close(self.clock() + min(self.timeout, 5.0))
            self._wake_loop()  # its poll() still holds the socket open
            log.info("closed the connection to %s", self.parameters.safe_url)

    # -- pihace 1.0.0's publisher.connection and publisher.channel -------------

    @property
    def connection(self):
        """pihace 1.0.0's ``publisher.connection`` (pika's BlockingConnection there):
        is_open, close(), process_data_events() and sleep(), over this pusher's own
        connection. See _PikaConnection."""
        return _PikaConnection(self)

    @property
    def channel(self):
        """pihace 1.0.0's ``publisher.channel`` (pika's BlockingChannel there):
        basic_publish(), queue_declare(), queue_purge(), queue_delete() and is_open, on
        this pusher's own channel. See _PikaChannel."""
        return _PikaChannel(self)

    def is_connected(self, channel=False):
        """Is the connection (with `channel`, the pusher's channel) open now? Connects not."""
        connection = self._connection
        return connection is not None and (connection.channel_is_open(self._channel)
                                           if channel else connection.is_open)

    def call(self, name, **values):
        """Send a synchronous method (Queue.Declare, Queue.Purge, Queue.Delete) on the
        pusher's channel, set up first as for a push, and return the broker's reply (a dict
        of its arguments). Raises what failed (PihaceError, OSError), as pika does."""
        deadline, setup_deadline = self._deadlines()
        if not self._lock.acquire(timeout=_time_left(deadline, self.clock)):
            raise TimeoutError(_BUSY)
        try:
            connection, deadline = self._ready(deadline, setup_deadline)
            reply = connection.call(self._channel, name, deadline, **values)
            if name == "Queue.Delete":
                self._declared = False  # the pusher's own queue, maybe: declared again
            return reply.args
        except (PihaceError, OSError) as exc:
            self._handle_failure(exc)
            raise
        finally:
            self._lock.release()

    def process_events(self, seconds=0.0):
        """Connect if need be, then for `seconds` handle what the broker sends and send the
        heartbeats due (pika's process_data_events). Raises what failed, as pika does."""
        until = self.clock() + max(0.0, seconds)
        wakeup = Wakeup() if seconds > 0 else None
        try:
            while True:
                with self._lock:
                    deadline, setup_deadline = self._deadlines()
                    try:
                        connection, _ = self._ready(deadline, setup_deadline)
                        heartbeat_in = connection.keep_alive(self.clock() + self.timeout)
                    except (PihaceError, OSError) as exc:
                        self._handle_failure(exc)
                        raise
                wait = until - self.clock()
                if wait <= 0:
                    return
                wakeup.wait(wait if heartbeat_in is None else min(wait, heartbeat_in),
                            connection)  # without the lock: other threads may push
        finally:
            if wakeup is not None:
                wakeup.close()

    # -- publishing -----------------------------------------------------------

    def _message(self, body, headers=None, message_id=None, timestamp=None, routing_key=None,
                 exchange=None, as_text=None, kind="pihace.health"):
        """Check and encode a message (of AMQP type `kind`); ValueError for what can never
        be sent. `as_text` turns what JSON cannot hold into text instead (for reports)."""
        if type(body) is bytes:  # noqa: E721 (the common case first: nothing to do)
            pass
        elif isinstance(body, dict):
            try:
                import json  # here, not at the top: slow to import (see the imports)

                body = json.dumps(body, separators=(",", ":"), allow_nan=False,
                                  default=as_text).encode()
            except (TypeError, ValueError) as exc:
                raise ValueError(f"the message cannot be serialised as JSON: {exc}") from None
        elif isinstance(body, str):
            body = body.encode("utf-8")
        elif isinstance(body, (bytearray, memoryview)):
            body = bytes(body)
        elif not isinstance(body, bytes):
            raise ValueError(f"a message body must be bytes or a dict, not {type(body).__name__}")
        if routing_key is not None or exchange is not None:  # the pusher's own were checked
            for name in (routing_key, exchange):
                if name is not None:
                    encode_shortstr(name)  # a ValueError if too long
        message_id = message_id or next(self._message_ids)
        timestamp = int(time.time() if timestamp is None else timestamp)
        if not 0 <= timestamp < 2 ** 63:
            raise ValueError(f"timestamp must be seconds since 1970, got {timestamp}")
        return _Message(body, self._encode_properties(headers, message_id, timestamp, kind),
                        message_id,
                        self.exchange if exchange is None else exchange,
                        self.routing_key if routing_key is None else routing_key)

    def _encode_properties(self, headers, message_id, timestamp, kind):
        """A message's properties; without headers, from a template for its type (a pusher
        sends few), which leaves only the message id and timestamp to encode."""
        template = self._properties_of_kind.get(kind) if headers is None else None
        if template is None:
            if headers is not None or type(kind) is not str or (  # noqa: E721
                    len(self._properties_of_kind) >= 16):
                return self._properties.encode(headers=headers, message_id=message_id,
                                               timestamp=timestamp, type=kind)
            template = self._properties_of_kind[kind] = PropertiesTemplate(
                dict(self._fixed_properties, type=kind), varying=("message_id", "timestamp"))
        return template.encode_all(message_id, timestamp)  # in flag order

    def _deadlines(self, timeout=None):
        """(deadline, setup deadline) of an operation starting now: `timeout` and
        `connect_timeout` unless a timeout is given for both."""
        now = self.clock()
        if timeout is not None:
            return now + timeout, now + timeout
        return now + self.timeout, now + self.connect_timeout

    def _deliver(self, messages, deadline, setup_deadline):
        """Publish messages in order and collect their confirms (pipelined).

        Returns {message_id: (acked, reason)}: (True, None) delivered, (True,
        reason) returned as unroutable, (False, reason) nacked; and the deadline
        for what follows (later, after a connection was set up). Raises for
        connection and channel trouble. Call with the lock held.
        """
        connection, deadline = self._ready(deadline, setup_deadline)
        return connection.publish(self._channel, messages, deadline,
                                  mandatory=self.confirm), deadline

    def publish(self, body, *, headers=None, message_id=None, timestamp=None,
                routing_key=None, exchange=None, kind="pihace.health"):
        """Send one message (bytes, or a dict as JSON) with the pusher's options; `kind`
        is its AMQP type (a watcher reads "pihace.watch.control" as an operator's).

        Returns True once confirmed (or sent, with confirm=False), else
        (False, reason). Unlike push(), nothing is kept for a later retry.
        """
        message = self._message(body, headers, message_id, timestamp, routing_key, exchange,
                                kind=kind)
        deadline, setup_deadline = self._deadlines()
        # waiting for another thread's publish counts in the deadline (which is
        # self.timeout from now)
        if not self._lock.acquire(timeout=self.timeout):
            return False, _BUSY
        try:
            outcomes, _ = self._deliver([message], deadline, setup_deadline)
            reason = outcomes[message.message_id][1]
        except (PihaceError, OSError) as exc:
            reason = self._handle_failure(exc)
        finally:
            self._lock.release()
        return True if reason is None else (False, reason)

    def push(self):
        """Take a report, put it in the outbox and deliver the outbox.

        True once this report is confirmed, else (False, reason): the report
        then waits in the outbox for the next push (unless the broker could not
        route it, or it was dropped from a full outbox).
        """
        message = self._take_report(waited_for=True)
        reasons = self._flush(*self._deadlines())
        outcome = self.outbox.take_outcome(message.message_id)
        if outcome is _PENDING:  # still in the outbox: this flush says why
            outcome = reasons.get(message.message_id, _PENDING)
        return True if outcome is None else (False, outcome)

    def pause(self, seconds, reason=None):
        """Announce maintenance: push a report now, and mark every report for `seconds`
        more, saying this device is paused until then (and why); a watcher shows it
        `paused` and runs no failure hook meanwhile. push()'s answer. `pause(0)` ends it."""
        seconds = float(_number("seconds", seconds, lambda v: 0 <= v < 1e7,
                                "a number of seconds from 0 to 10,000,000"))
        if reason is not None and not isinstance(reason, str):
            raise TypeError(f"reason must be a string, got {type(reason).__name__}")
        self._paused_until = time.time() + seconds if seconds else 0.0
        self._pause_reason = reason if seconds else None
        return self.push()

    def _take_report(self, waited_for=False):
        """Run the checks and put the report in the outbox."""
        if self.healthcheck is None:
            raise ValueError("push() needs the pusher's healthcheck; use publish() to send "
                             "other messages")
        report = self.healthcheck.check(output="dict")
        status = None
        if isinstance(report, dict):  # a healthcheck of the caller's own may return anything
            # what a watcher needs to tell "late" (new keys, after pihace 1.0.0's): who, how
            # often; in a copy, as the caller's healthcheck may keep the dict it returned
            report = {**report, "host": _HOST,
                      **({"interval": self.interval} if self.interval else {})}
            # new keys too, which pihace 1.0.0's consumers ignore: why not to worry
            if self._paused_until > time.time():
                report.update(paused_until=self._paused_until, pause_reason=self._pause_reason)
            if self.interval:
                self._loop_report = report  # its last word will repeat it (_finish_loop)
            status = report.get("status")
        # a component name that is a Path, say, must not stop the reports
        message = self._message(report, headers={"status": status}, as_text=_text)
        self.outbox.add(message, waited_for)  # even while another push runs
        return message

    def flush(self, timeout=None):
        """Deliver the outbox, oldest first: True when it is empty, else (False, reason)."""
        reasons = self._flush(*self._deadlines(timeout))
        return True if not reasons else (False, next(iter(reasons.values())))

    def _flush(self, deadline, setup_deadline, connect=False):
        """Deliver the outbox (and with `connect`, connect even if it is empty):
        {message_id: reason} for each message not delivered."""
        if not self._lock.acquire(timeout=_time_left(deadline, self.clock)):
            return dict.fromkeys(self.outbox.ids(), _BUSY) or {None: _BUSY}
        try:
            reasons, refused, routed_again = {}, False, set()
            if connect and not self.outbox:
                try:
                    self._ready(deadline, setup_deadline)
                except (PihaceError, OSError) as exc:
                    return {None: self._handle_failure(exc)}
            while self.outbox and not refused:  # a report that stays: stop there
                batch = self.outbox.oldest(256)
                try:
                    outcomes, deadline = self._deliver(batch, deadline, setup_deadline)
                except (PihaceError, OSError) as exc:
                    return dict.fromkeys(self.outbox.ids(), self._handle_failure(exc))
                for message in batch:
                    acked, reason = outcomes[message.message_id]
                    if not acked:
                        refused = True
                        reasons[message.message_id] = reason
                    elif reason is not None and self._route_again(message, routed_again):
                        pass  # it stays first in the outbox, and goes again after a declare
                    else:  # delivered, or unroutable: sending it again would not help
                        self.outbox.settle(message, reason)
                        if reason is not None:
                            log.warning("report dropped: %s", reason)
                            reasons[message.message_id] = reason
            if refused:
                self._renew_channel(deadline)
            for message_id in self.outbox.ids():  # not tried: behind a refused one
                reasons.setdefault(message_id, next(iter(reasons.values()), _PENDING))
            return reasons
        finally:
            self._lock.release()

    def _route_again(self, message, routed_again):
        """A report the broker could not route: when the pusher declares its queue, the
        queue was deleted since; declare it again and resend (once per flush)."""
        if not self.declare or self.exchange or message.message_id in routed_again:
            return False
        if not routed_again:
            log.warning("the queue %r is gone (the broker could not route a report): "
                        "declaring it again", self.queue_name)
        routed_again.add(message.message_id)
        self._declared = False
        return True

    def _renew_channel(self, deadline):
        """After a Nack, the retry goes on a new channel: RabbitMQ 3.10 keeps a channel
        asking a quorum queue's dead leader, and nacks all it publishes there."""
        connection = self._connection
        if connection is None or not connection.channel_is_open(self._channel):
            return
        try:
            connection.close_channel(self._channel, max(deadline, self.clock() + 1.0))
        except (PihaceError, OSError) as exc:
            self._handle_failure(exc)

    def _handle_failure(self, exc):
        """Drop what the error broke; the reason, for people."""
        if isinstance(exc, ChannelClosed):
            self._declared = False  # the next push opens a new channel and declares again
        elif not isinstance(exc, PublishError):
            self._drop()
        reason = describe_error(exc, self.parameters.safe_url)
        log.debug("publish failed: %s", reason)
        return reason

    # -- the loop -------------------------------------------------------------

    def push_forever_in_loop(self, interval=60, stop_event=None):
        """Push a report every `interval` seconds until stop(), stop_event or Ctrl-C.

        Reports keep a fixed cadence (a slow round skips the ticks it missed).
        Between them the loop sleeps, waking only to send heartbeats and to read
        what the broker sends, so the connection is kept alive. A connection
        lost while waiting is opened again within half an interval (at a random
        moment, so that a fleet does not come back in step), or by the next
        report if that comes first (another node of the list, at once). After a
        failed attempt, reports are still taken on schedule, into the outbox,
        while attempts back off (see Backoff; at most 30 s apart): the first
        retry within half an interval when connecting failed, within 0.5 s when
        the broker refused a report on an open connection (a Nack while a quorum
        queue elects its leader). stop() ends the wait, or the wait for the
        broker, at once; a stop_event is looked at every second. On the way out
        the outbox gets a last chance of at most `timeout` and 5 s (a second
        stop() or Ctrl-C ends it at once), and the connection is closed cleanly.
        """
        interval = _seconds("interval", interval)
        if self.healthcheck is None:
            raise ValueError("push_forever_in_loop() needs the pusher's healthcheck")
        self.interval = interval  # in each report the loop takes; None again when it ends
        backoff = Backoff(spread=interval / 2)
        next_report, retry_at, failed_rounds = self.clock(), math.inf, 0
        self._wakeup, self._interrupt = Wakeup(), Wakeup()
        self._interruptible(True)
        log.info("pushing a report to %s every %gs", self.parameters.safe_url, interval)
        try:
            while not self._stopped(stop_event):
                now = self.clock()
                result = None
                if now >= next_report:
                    if failed_rounds:  # backing off after a failed attempt: it waits
                        self._survive(self._take_report)
                    else:  # connected, or lost while waiting: it goes now, connecting first
                        result = self._survive(self.push)
                    next_report += interval * (1 + (now - next_report) // interval)
                elif now >= retry_at:
                    # fails fast while the broker blocks; connects even with nothing to send
                    result = self._survive(self._resume)
                if result is True:
                    if failed_rounds:
                        log.warning("publishing again through %s after %d failed attempt(s)",
                                    self.parameters.safe_url, failed_rounds)
                    retry_at, failed_rounds = math.inf, 0
                    backoff.succeeded()
                elif result is not None and not self._stop_requested:
                    if not failed_rounds:
                        log.warning("cannot publish (%s); %d report(s) wait in the outbox",
                                    result[1], len(self.outbox))
                    failed_rounds += 1
                    # refused on an open connection (a Nack while a quorum queue elects a
                    # leader, say): soon; a connection that failed: spread, then backing off
                    retry_at = self.clock() + backoff.failed(spread=not self.is_connected())
                if self._idle(min(next_report, retry_at), stop_event) and retry_at == math.inf:
                    retry_at = self.clock() + backoff.failed()  # lost: reconnect, spread
        except KeyboardInterrupt:
            log.info("interrupted: stopping")
        finally:
            self._finish_loop()

    def _resume(self):
        """The retry after a failure or a loss: reconnect, then deliver the outbox."""
        reasons = self._flush(*self._deadlines(), connect=True)
        return True if not reasons else (False, next(iter(reasons.values())))

    def _finish_loop(self):
        """The outbox's last chance, bounded on its own; then close."""
        self._interrupt.clear()  # the stop() that ended the loop must not end this too
        try:
            if self._loop_report is not None:  # the last word: stopped on purpose
                self._survive(self._say_stopped)
            if self.outbox:
                self.flush(timeout=min(self.timeout, 5.0))
        except KeyboardInterrupt:  # a second Ctrl-C: stop now
            pass
        finally:
            if self.outbox:
                log.warning("stopping with %d undelivered report(s)%s", len(self.outbox),
                            "" if self.outbox.path is None else
                            f", kept in {self.outbox.path} for the next run")
            self._interruptible(False)
            self.close()
            wakeup, stopping, self._wakeup, self._interrupt = self._wakeup, self._interrupt, None, None
            wakeup.close()
            stopping.close()
            self._stop_requested = False  # ready for another run
            self.interval = None  # a push() after the loop announces no cadence

    def _say_stopped(self):
        """The loop's last report again, now, saying it stopped on purpose (a watcher then
        shows the device stopped, not late and silent); the checks do not run again."""
        report, self._loop_report = self._loop_report, None
        report = {**report, "timestamp": get_utc_timestamp(), "stopped": True}
        self.outbox.add(self._message(report, headers={"status": report.get("status")},
                                      as_text=_text))

    def _interruptible(self, on):
        """Let stop() end the connection's waits for the broker (only while the loop runs)."""
        with self._lock:
            if self._connection is not None:
                self._connection.interrupt = self._interrupt if on else None

    def _survive(self, step):
        """step()'s result; an unexpected exception (a bug) is logged with its traceback,
        passwords masked, and counts as a failed round: the loop goes on."""
        try:
            return step()
        except Exception as exc:
            import traceback  # here, not at the top: only a bug needs them
            from urllib.parse import quote

            reason = describe_error(exc)
            text = reason + "\n" + "".join(
                traceback.format_exception(type(exc), exc, exc.__traceback__))
            for password in {p.password for p in self.endpoints if p.password_given}:
                if password:
                    text = text.replace(password, "***").replace(quote(password, safe=""), "***")
            reason, _, trace = text.partition("\n")
            log.error("unexpected error in the push loop (a bug: please report it); the loop "
                      "goes on: %s\n%s", reason, "\n".join(map(_printable, trace.splitlines())))
            return False, reason

    def stop(self):
        """End push_forever_in_loop at once; from any thread, or a signal handler.
        A second stop() ends the outbox's last chance too."""
        super().stop()

    def _wake_loop(self):
        """Make the loop's wait, if one runs, look again at the stop flag and the connection."""
        wakeup = self._wakeup
        if wakeup is not None:
            wakeup.wake()

    def _idle(self, until, stop_event=None):
        """Sleep until the clock reaches `until` or a stop is asked for, waking only to
        keep the connection alive: heartbeats when due, broker frames (Close,
        Blocked) when they come. Other threads may publish meanwhile. True when
        the connection was lost meanwhile."""
        while not self._stopped(stop_event):
            wait = until - self.clock()
            if wait <= 0:
                return False
            if stop_event is not None:
                wait = min(wait, 1.0)  # nothing wakes us when a plain Event is set
            with self._lock:
                connection = self._connection
                if connection is not None and not connection.is_open:
                    connection = None
                if connection is not None:
                    try:
                        heartbeat_in = connection.keep_alive(self.clock() + self.timeout)
                    except (PihaceError, OSError) as exc:
                        log.warning("while waiting for the next report: %s",
                                    self._handle_failure(exc))
                        if self._connection is None:
                            return True
                        continue  # a closed channel leaves the connection: look again
                    if heartbeat_in is not None:
                        wait = min(wait, heartbeat_in)
            self._wakeup.wait(wait, connection)  # without the lock


def _wait_seconds(name, value):
    return float(_number(name, value, lambda v: 0 <= v < 1e6,
                         "a number of seconds from 0, below a million"))


class _PikaMethod:
    """The part of pika's method frame that code reads: ``.method.message_count`` ..."""

    def __init__(self, name, arguments):
        self.method = type(name.replace(".", "").replace("-", ""), (), dict(arguments))()


class _PikaConnection:
    """``publisher.connection`` of pihace 1.0.0 code: what it called on pika's
    BlockingConnection, done by the pusher over its own connection. The pusher connects
    on first use, not in its constructor: is_open is False until then (process_data_events()
    connects)."""

    def __init__(self, pusher):
        self._pusher = pusher

    @property
    def is_open(self):
        return self._pusher.is_connected()

    @property
    def is_closed(self):
        return not self._pusher.is_connected()

    def close(self, reply_code=200, reply_text="Normal shutdown"):
        self._pusher.close()

    def process_data_events(self, time_limit=0):
        """Handle the broker's frames and send heartbeats, for up to time_limit seconds."""
        self._pusher.process_events(0.0 if time_limit is None else
                                     _wait_seconds("time_limit", time_limit))

    def sleep(self, duration):
        """Wait `duration` seconds while keeping the connection alive."""
        self._pusher.process_events(_wait_seconds("duration", duration))

    def channel(self, channel_number=None):
        return _PikaChannel(self._pusher)


class _PikaChannel:
    """``publisher.channel`` of pihace 1.0.0 code: what it called on pika's BlockingChannel,
    done on the pusher's own channel. basic_publish() sends with the pusher's properties
    (persistent, JSON content type; the headers of `properties` kept) and waits for the
    broker's confirm: a message not confirmed raises PublishError (pika: NackError,
    UnroutableError). The others return pika's shape: ``.method.message_count`` ..."""

    def __init__(self, pusher):
        self._pusher = pusher

    @property
    def is_open(self):
        return self._pusher.is_connected(channel=True)

    @property
    def is_closed(self):
        return not self._pusher.is_connected(channel=True)

    def basic_publish(self, exchange, routing_key, body, properties=None, mandatory=False):
        outcome = self._pusher.publish(body, headers=getattr(properties, "headers", None),
                                       routing_key=routing_key, exchange=exchange)
        if outcome is not True:
            raise PublishError(outcome[1])

    def queue_declare(self, queue, passive=False, durable=False, exclusive=False,
                      auto_delete=False, arguments=None):
        return _PikaMethod("Queue.DeclareOk", self._pusher.call(
            "Queue.Declare", queue=queue, passive=passive, durable=durable, exclusive=exclusive,
            auto_delete=auto_delete, arguments=arguments or {}))

    def queue_purge(self, queue):
        return _PikaMethod("Queue.PurgeOk", self._pusher.call("Queue.Purge", queue=queue))

    def queue_delete(self, queue, if_unused=False, if_empty=False):
        return _PikaMethod("Queue.DeleteOk", self._pusher.call(
            "Queue.Delete", queue=queue, if_unused=if_unused, if_empty=if_empty))
