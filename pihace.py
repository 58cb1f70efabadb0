"""pihace: health checks for Python services, in one file, with the standard library only.

Register checkers, take a report, and push it to RabbitMQ (or any AMQP 0-9-1
broker) over a plain socket. A drop-in for the API of the PyPI package pihace
1.0.0, without its dependencies; psutil is used when it is installed.

    from pihace.healthcheck import HealthCheck
    from pihace.pusher.messaging import AMQPPusher

    hc = HealthCheck(with_system=True, name="MyApp", version="1.0.0")
    hc.register("example", lambda: True)
    publisher = AMQPPusher(amqp_url="amqp://guest:guest@localhost:5672/", healthcheck=hc)
    publisher.push()                            # True once the broker confirmed it

Run ``python3 pihace.py`` to print this machine's health report as JSON.

Copyright (c) 2026 the pihace developers. MIT licence: see LICENSE, or
https://opensource.org/licenses/MIT. Keep this notice in copies of this file.
"""

from __future__ import annotations

import binascii
import collections
import collections.abc
import contextvars
import functools
import itertools
import math
import os
import queue
import select
import struct
import sys
import threading
import time
import weakref

# Imported where they are used, because of what they cost: logging (about 6 ms),
# socket (4 ms), json (2 ms) and, on an interpreter that has not loaded re at start
# (Debian's python3), urllib.parse and shutil (5 ms each) and random (3 ms) would take
# most of the 15 ms import budget (bench/bench_check.py); asyncio, ssl, argparse,
# http.client and platform serve few callers.

try:
    import psutil
except ImportError:  # psutil is optional: the standard library covers Linux
    psutil = None

__version__ = "1.1.0"
__all__ = [
    "AMQP",
    "AMQPPusher",
    "Disk",
    "ElasticSearch",
    "ElasticSearchPusher",
    "HTTP",
    "HealthCheck",
    "HealthServer",
    "InfluxDB",
    "MongoDB",
    "MongoStorage",
    "MySQL",
    "PihaceError",
    "SystemInfo",
    "TCP",
    "Watcher",
    "calculate_status",
    "format_health_json",
    "format_nagios",
    "format_prometheus",
    "format_rate",
    "get_system_info",
    "get_utc_timestamp",
    "load_healthcheck_from_yaml",
    "main",
    "mark_optional",
    "required_checks_passed",
]


class _Logger:
    """logging.getLogger("pihace") with a NullHandler, made on first use (logging is slow
    to import). The NullHandler keeps Python from printing pihace's warnings to stderr
    when the application configured no logging."""

    @staticmethod
    def _logger():
        import logging  # here, not at the top: slow to import (see the imports)

        logger = logging.getLogger("pihace")
        if not any(isinstance(handler, logging.NullHandler) for handler in logger.handlers):
            logger.addHandler(logging.NullHandler())
        return logger

    def __getattr__(self, name):
        return getattr(self._logger(), name)

    def __setattr__(self, name, value):  # pihace.log.propagate = False reaches the logger
        setattr(self._logger(), name, value)


log = _Logger()


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------

class PihaceError(Exception):
    """Root of every error pihace raises on purpose."""


class AMQPError(PihaceError):
    """Something went wrong speaking AMQP."""


class ProtocolError(AMQPError):
    """The rules of AMQP 0-9-1 were broken."""


class LocalProtocolError(ProtocolError):
    """The caller asked for something the protocol does not allow now."""


class RemoteProtocolError(ProtocolError):
    """The broker (or whatever answered) sent bytes that break the protocol."""


class _ClosedByBroker(AMQPError):
    """The broker closed a connection or channel, and said why."""

    what = "connection"
    hints = {}  # reply code -> what to check, said with the URL

    def __init__(self, reply_code=0, reply_text="", class_id=0, method_id=0, cause=None):
        self.reply_code, self.reply_text = reply_code, reply_text
        self.class_id, self.method_id = class_id, method_id
        super().__init__(f"broker closed the {self.what}: {reply_text or 'no reason given'} "
                         f"(reply code {reply_code}" + (f", in reply to {cause})" if cause else ")"))


class ConnectionClosed(_ClosedByBroker):
    """The broker closed the connection (Connection.Close)."""

    hints = {403: "check the user name and password", 530: "check the vhost"}


class ChannelClosed(_ClosedByBroker):
    """The broker closed the channel (Channel.Close); the connection lives on."""

    what = "channel"


class ConsumerCancelled(AMQPError):
    """The broker cancelled our consumer: its queue was deleted, or its node went away."""


class PublishError(AMQPError):
    """A message the broker nacked, returned as unroutable, or did not confirm in time."""


class Interrupted(PihaceError):
    """stop() ended a wait for the broker before its deadline."""


# ---------------------------------------------------------------------------
# small helpers: the one number validator, the one error description
# ---------------------------------------------------------------------------

def _number(name, value, valid, expected, kind=(int, float)):
    """`value` when it is a number of `kind` (never a bool) and valid(value), else a
    ValueError that names `name` and says what was `expected`."""
    if isinstance(value, bool) or not isinstance(value, kind) or not valid(value):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return value


def _seconds(name, value):
    """A duration: a positive number of seconds (below a million), as a float."""
    return float(_number(name, value, lambda v: 0 < v < 1e6,
                         "a positive number of seconds, below a million"))


_TEXT_LIMIT = 2000  # characters of a checker's message, or of an error, that are kept


def _text(value):
    """Any value as a string of bounded length (a checker's message, an error's)."""
    if isinstance(value, bytes):
        value = str(value, "utf-8", "replace")
    elif not isinstance(value, str):
        try:
            value = str(value)
        except Exception:
            value = f"<{type(value).__name__} that cannot be shown>"
    if len(value) > _TEXT_LIMIT:
        value = f"{value[:_TEXT_LIMIT]}... ({len(value) - _TEXT_LIMIT} more characters)"
    return value


# What a fork() leaves broken in the child (threads gone, a lock held by one of them, a socket
# shared with the parent): objects with an _after_fork() method, which the child calls.
_reset_after_fork = weakref.WeakSet()


def _after_fork_in_child():
    for thing in list(_reset_after_fork):
        thing._after_fork()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


# C0 and C1 control characters and DEL, written as escapes: text from outside (a
# broker's reply text, an exception's message) must not move a terminal's cursor.
_CONTROL_ESCAPES = {code: repr(chr(code))[1:-1]
                    for code in itertools.chain(range(32), range(127, 160))}


def _printable(text):
    """Text from outside, safe for a terminal or a log line: control characters escaped."""
    return str(text).translate(_CONTROL_ESCAPES)


def describe_error(exc, where=None):
    """What went wrong, in one line for people.

    An OSError in the system's words ("connection refused", "timed out", or
    the sentence pihace gave it); an error pihace raised on purpose as its
    message; anything else as "Type: message". `where`, a URL whose password
    is masked, is added to errors that do not come from the broker, and to the
    broker's refusals that a URL can explain (a wrong password or vhost).
    """
    import socket  # only failures need it, and it is slow to import

    if isinstance(exc, socket.gaierror):
        reason = f"cannot resolve the host name: {exc.strerror}"
    elif isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        reason = exc.strerror[:1].lower() + exc.strerror[1:]  # "Connection refused"
        if exc.filename is not None:  # "no such file or directory: '/etc/app.conf'"
            reason += f": {exc.filename!r}" + (f" -> {exc.filename2!r}"
                                                if exc.filename2 is not None else "")
    elif isinstance(exc, (OSError, PihaceError)):
        reason = _text(exc) or type(exc).__name__
    else:
        message = _text(exc)
        reason = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    hint = getattr(exc, "hints", {}).get(getattr(exc, "reply_code", None))
    if where and hint:
        reason += f"; {hint} of {where}"
    elif where and not isinstance(exc, (PublishError, _ClosedByBroker)):
        reason += f" ({where})"
    return _printable(reason)


# ---------------------------------------------------------------------------
# system information
# ---------------------------------------------------------------------------

_MODULE_PSUTIL = object()  # SystemInfo's default: the module attribute `psutil`, looked up per use


class SystemInfo:
    """Resource figures and platform facts, without ever blocking.

    CPU usage is the share of busy time since the previous sample (since boot
    for the first one), so a report never waits to measure it. Figures come
    from psutil when it is given, else from /proc where the OS has it; a figure
    that cannot be measured is None.
    """

    def __init__(self, psutil_module=_MODULE_PSUTIL, disk_path=None):
        self._psutil = psutil_module
        self.disk_path = disk_path or os.path.abspath(os.sep)
        self._lock = threading.Lock()
        self._last_cpu = (0, 0)  # (busy, total) of the previous sample
        self._last_percent = None

    @property
    def psutil(self):
        """The psutil in use: the one given, else this module's `psutil` as it is now, so that
        ``mock.patch("pihace.system_info.psutil", ...)`` reaches it (as with pihace 1.0.0)."""
        return globals()["psutil"] if self._psutil is _MODULE_PSUTIL else self._psutil

    def cpu_percent(self):
        # busy and total CPU time since boot; guest time is already inside user and nice
        try:
            if self.psutil is not None:
                times = self.psutil.cpu_times()
                if not isinstance(times, tuple):  # a test double (a Mock) as pihace 1.0.0 read it
                    return self.psutil.cpu_percent(interval=None)
                total = sum(times) - (getattr(times, "guest", 0) + getattr(times, "guest_nice", 0))
                busy = total - times.idle - getattr(times, "iowait", 0)
            else:
                with open("/proc/stat", "rb") as stat:  # cpu user nice system idle iowait ...
                    times = [int(x) for x in stat.readline().split()[1:9]] + [0] * 5
                total = sum(times)
                busy = total - times[3] - times[4]
        except (OSError, ValueError, IndexError, AttributeError):
            return None
        with self._lock:
            last_busy, last_total = self._last_cpu
            if total > last_total:  # else: too soon for a new figure
                self._last_percent = round(max(0.0, (busy - last_busy) / (total - last_total) * 100), 1)
                self._last_cpu = (busy, total)
            return self._last_percent

    def memory(self):
        """(percent used, bytes available), or (None, None)."""
        try:
            if self.psutil is not None:
                memory = self.psutil.virtual_memory()
                return memory.percent, memory.available
            with open("/proc/meminfo", "rb") as meminfo:
                values = dict(line.split()[:2] for line in meminfo)  # b"MemTotal:": b"16318044"
            total, available = (int(values[key]) * 1024 for key in (b"MemTotal:", b"MemAvailable:"))
            return round((total - available) / total * 100, 1), available
        except (OSError, ValueError, KeyError, IndexError, ZeroDivisionError):
            return None, None

    def disk(self):
        """(percent used, bytes free) of the disk holding disk_path, or (None, None)."""
        import shutil  # here, not at the top: slow to import (see the imports)

        try:
            disk_usage = getattr(self.psutil, "disk_usage", None)
            if disk_usage is not None:  # psutil's figures, as pihace 1.0.0 read them
                usage = disk_usage(self.disk_path)
                return usage.percent, usage.free
            usage = shutil.disk_usage(self.disk_path)
            return round(usage.used / (usage.used + usage.free) * 100, 1), usage.free
        except (OSError, ZeroDivisionError, AttributeError):
            return None, None

    def read(self):
        """The `system` part of a report, with pihace 1.0.0's keys and formats."""
        memory_percent, memory_available = self.memory()
        disk_percent, disk_free = self.disk()
        cpu = self.cpu_percent()
        if hasattr(os, "uname"):  # what platform.uname() reads: (system, node, release, version...)
            uname = os.uname()
        else:  # Windows
            import platform  # here, not at the top: slow to import, and only Windows needs it

            uname = platform.uname()
        return {
            "cpu_usage": None if cpu is None else f"{cpu}%",
            "memory_usage": None if memory_percent is None else f"{memory_percent}%",
            "memory_available": None if memory_available is None
            else f"{round(memory_available / 1024 ** 2, 2)} MB",
            "disk_usage": None if disk_percent is None else f"{disk_percent}%",
            "disk_available": None if disk_free is None else f"{round(disk_free / 1024 ** 3, 2)} GB",
            "os": uname[0] or None,
            "os_version": uname[3] or None,
            "python_version": "%d.%d" % sys.version_info[:2],
        }


_system_info = SystemInfo()


def get_system_info():
    """This machine's system figures (pihace 1.0.0's ``pihace.system_info``)."""
    return _system_info.read()


# ---------------------------------------------------------------------------
# health checks
# ---------------------------------------------------------------------------

def get_utc_timestamp(now=None):
    """`now` (default: the current time.time()) as ISO 8601 UTC ending in Z:
    ``2026-05-01T12:34:56.789123Z``."""
    now = time.time() if now is None else now
    seconds = int(now)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + ".%06dZ" % ((now - seconds) * 1e6)


def calculate_status(passed, total):
    """"Available" when all passed (or there is nothing to check), "Unavailable"
    when none did, else "Partially Available"."""
    return "Available" if passed == total else "Unavailable" if passed == 0 else "Partially Available"


def format_rate(passed, total):
    return f"{passed}/{total}"


def _interpret(result):
    """A checker's return value as (passed, message)."""
    if result is True:
        return True, None
    if result is False:
        return False, "checker returned False"
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], bool):
        return result[0], None if result[1] is None else _text(result[1])
    shown = _text(repr(result))[:200]
    return False, (f"checker returned {shown} ({type(result).__name__}); "
                   "expected True, (True, detail), False or (False, reason)")


_CO_COROUTINE = 0x80  # inspect.CO_COROUTINE: inspect costs 6 ms of import time


def _is_async_callable(checker):
    """Is `checker` an async def function, or an object whose __call__ is one?"""
    while isinstance(checker, functools.partial):
        checker = checker.func
    code = getattr(checker, "__code__", None) or getattr(getattr(type(checker), "__call__", None),
                                                         "__code__", None)
    return code is not None and bool(code.co_flags & _CO_COROUTINE)


class _Run:
    """One run of a sync checker, with the methods of a concurrent.futures.Future
    that check() uses (that module costs memory)."""

    __slots__ = ("_outcome", "_callbacks", "_lock")

    def __init__(self):
        self._outcome = None  # (value, exception), once done
        self._callbacks = []
        self._lock = threading.Lock()

    def done(self):
        return self._outcome is not None

    def finish(self, value, exception):
        with self._lock:
            self._outcome = (value, exception)
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)

    def add_done_callback(self, callback):
        with self._lock:
            if self._outcome is None:
                self._callbacks.append(callback)
                return
        callback(self)

    def result(self):
        value, exception = self._outcome
        if exception is not None:
            raise exception
        return value


class _Workers:
    """Daemon threads that run sync checkers.

    A checker that hangs holds only its own thread; an idle thread is reused
    (starting a thread costs more than a trivial check) and ends after a while.
    """

    IDLE_SECONDS = 60.0

    def __init__(self):
        self._tasks = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for a task, minus tasks promised to them

    def submit(self, function):
        run = _Run()
        with self._lock:
            reuse = self._idle > 0
            self._idle -= reuse
        if reuse:
            self._tasks.put((function, run))
        else:
            threading.Thread(target=self._work, args=(function, run),
                             name="pihace-check", daemon=True).start()
        return run

    def _work(self, function, run):
        while True:
            try:
                run.finish(function(), None)
            except BaseException as exc:  # a checker's sys.exit() is a failure too
                run.finish(None, exc)
            del function, run  # no references kept while idle
            with self._lock:
                self._idle += 1
            try:
                function, run = self._tasks.get(timeout=self.IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:  # nobody promised us a task: retire
                        self._idle -= 1
                        return
                function, run = self._tasks.get()  # the task promised to us is on its way


_workers = _Workers()
_async_lock = threading.Lock()
_async_loop = None


def _run_async(coroutine):
    """Run `coroutine` on pihace's event loop, in a daemon thread; return its Future."""
    global _async_loop
    import asyncio  # here, not at the top: it is slow to import and rarely needed

    with _async_lock:
        if _async_loop is None:
            _async_loop = asyncio.new_event_loop()
            threading.Thread(target=_async_loop.run_forever, name="pihace-async", daemon=True).start()
    return asyncio.run_coroutine_threadsafe(coroutine, _async_loop)


def _new_workers_after_fork():
    """In a forked child: only the thread that forked survives, so the worker threads and
    the event loop's thread are gone, and a lock one of them held stays held."""
    global _workers, _async_loop, _async_lock
    _workers, _async_loop, _async_lock = _Workers(), None, threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_new_workers_after_fork)


async def _awaited_call(function):
    return await function()


def _call_checker(checker):
    """Run a sync checker in a worker thread; a returned awaitable is awaited."""
    result = checker()
    if hasattr(result, "__await__"):
        result = _run_async(_awaited_call(lambda: result)).result()
    return result


def _timeout(name, value):
    """A checker's timeout as given (hc.checkers shows it so): seconds, or None for none (as
    pihace 1.0.0 allowed)."""
    if value is not None:
        _seconds(name, value)
    return value


class _Checker(collections.abc.MutableMapping):
    """A registered checker, and its latest run: a run that outlives its check()
    is waited for by the next check(), never started twice.

    It reads and writes as pihace 1.0.0's ``hc.checkers[name]``, the dict
    ``{"checker": function, "timeout": seconds, "retries": count}``.
    """

    __slots__ = ("name", "function", "timeout", "retries", "is_async", "run", "started", "lock")
    _KEYS = {"checker": "function", "timeout": "timeout", "retries": "retries"}

    def __init__(self, name, function, timeout, retries):
        self.name, self.function, self.timeout, self.retries = name, function, timeout, retries
        self.is_async = _is_async_callable(function)
        self.run, self.started = None, 0.0
        self.lock = threading.Lock()  # check() from two threads at once: still one run

    def __getitem__(self, key):
        return getattr(self, self._KEYS[key])

    def __setitem__(self, key, value):
        if key not in self._KEYS:
            raise KeyError(f"a checker has {', '.join(map(repr, self._KEYS))}, not {key!r}")
        if key == "checker":
            if not callable(value):
                raise ValueError(f"checker {self.name!r} must be callable, got "
                                 f"{type(value).__name__}")
            with self.lock:  # a run of the old function is not this checker's any more
                self.function, self.is_async, self.run = value, _is_async_callable(value), None
        elif key == "timeout":
            self.timeout = _timeout(f"timeout of checker {self.name!r}", value)
        else:
            self.retries = _number(f"retries of checker {self.name!r}", value, lambda v: v >= 0,
                                   "an integer >= 0", int)

    def __delitem__(self, key):
        raise TypeError("a checker keeps its settings; remove the checker with "
                        "hc.checkers.pop(name)")

    def __iter__(self):
        return iter(self._KEYS)

    def __len__(self):
        return len(self._KEYS)

    def __repr__(self):
        return repr(dict(self))

    def start(self, now, loop=None):
        """The Future of this checker's run: the one still going, else a new one.

        It runs in a copy of the caller's context (contextvars: a Flask app
        context, say); an async checker runs on `loop`, the caller's running
        loop, when one is given (its run is cancelled at its timeout, so it is
        never waited for by a later check), else on pihace's own loop.
        """
        if loop is not None and self.is_async:
            self.started = now
            return loop.create_task(_awaited_call(self.function))  # the task copies the context
        with self.lock:
            if self.run is None or self.run.done():
                self.started = now
                # call_soon_threadsafe, inside run_coroutine_threadsafe, copies the context
                self.run = (_run_async(_awaited_call(self.function)) if self.is_async
                            else _workers.submit(functools.partial(
                                contextvars.copy_context().run, _call_checker, self.function)))
            return self.run


def _new_checker(name, function, timeout, retries):
    """A _Checker from register()'s arguments, each checked; ValueError names a bad one."""
    if not callable(function):
        raise ValueError(f"checker {name!r} must be callable, got {type(function).__name__}")
    timeout = _timeout(f"timeout of checker {name!r}", timeout)
    _number(f"retries of checker {name!r}", retries, lambda v: v >= 0, "an integer >= 0", int)
    return _Checker(str(name), function, timeout, retries)


class _Attempts:
    """One checker's attempts during one check(); `outcome` is its entry in the report."""

    __slots__ = ("checker", "wake", "run", "count", "deadline", "outcome", "loop")

    def __init__(self, checker, wake, now, loop=None):
        self.checker, self.wake, self.count, self.loop = checker, wake, 0, loop
        self.attempt(now, new_run=True)

    def attempt(self, now, new_run):
        """Another attempt: a new run, or more time for the one that timed out."""
        self.count += 1
        self.deadline = now + (math.inf if self.checker.timeout is None else self.checker.timeout)
        if new_run:
            self.run = self.checker.start(now, self.loop)
            self.run.add_done_callback(self.wake)  # wake(run) when it ends

    def advance(self, now, began):
        """Settle the outcome, or start the next attempt after a failed one; True once
        settled (passed, or failed with no retry left)."""
        checker, run, done = self.checker, self.run, self.run.done()
        if done:
            try:
                passed, message = _interpret(run.result())
            except BaseException as exc:
                passed, message = False, describe_error(exc)
        elif now < self.deadline:
            return False
        else:
            passed, message, ran_for = False, f"timed out after {checker.timeout:g}s", now - checker.started
            if ran_for > checker.timeout * self.count + 0.5:
                message += f" (still running since an earlier check, {ran_for:.0f}s ago)"
        if not passed and self.count <= checker.retries:
            self.attempt(now, new_run=done)  # a timed-out run is given more time, not restarted
            return False
        if not done and checker.is_async:
            run.cancel()
        self.outcome = {"status": "pass" if passed else "fail",
                        "duration_ms": round((now - began) * 1000, 3),
                        "attempts": self.count, "message": message}
        return True


def _wait_time(pending):
    """Seconds until the nearest deadline of `pending` attempts; None when none has one."""
    deadline = min(attempts.deadline for attempts in pending)
    return None if deadline == math.inf else max(0.0, deadline - time.monotonic())


REPORT_FORMATS = ("dict", "json", "str", "health+json", "prometheus", "nagios")


def _output_name(output):
    """A report format's name (REPORT_FORMATS): case does not matter, and None is "dict"
    (as in pihace 1.0.0)."""
    if output is None:
        return "dict"
    if not isinstance(output, str):
        raise TypeError(f"output must be one of {', '.join(REPORT_FORMATS)}, "
                        f"got {type(output).__name__}")
    name = output.lower()
    if name not in REPORT_FORMATS:
        raise ValueError(f"output must be one of {', '.join(REPORT_FORMATS)}, "
                         f"got {_printable(repr(output))}")
    return name


class HealthCheck:
    """Registered checkers, and the report of one run of all of them.

    A checker is a callable (sync or async) that passes by returning True or
    (True, detail) and fails by returning False or (False, reason), by raising,
    or by running past its timeout. It is tried at most 1 + retries times, each
    attempt bounded by timeout, so one check takes at most
    timeout * (1 + retries) seconds (timeout=None: no bound). All checkers run
    at once, in a copy of the caller's context; a checker still running from an
    earlier report is waited for, never started twice.
    """

    def __init__(self, with_system=False, name=None, version=None, *, system_info=None):
        self.with_system = with_system
        self.component_name = name
        self.component_version = version
        self.system_info = system_info  # None: get_system_info(), looked up at each report
        self.checkers = {}
        self._lock = threading.Lock()
        _reset_after_fork.add(self)

    def _after_fork(self):
        """In a forked child: the runs in progress died with the parent's threads."""
        self._lock = threading.Lock()
        for checker in self.checkers.values():
            if isinstance(checker, _Checker):  # a dict set whole becomes one at the next check
                checker.run, checker.lock = None, threading.Lock()

    def register(self, name, checker, timeout=5, retries=2):
        """Add (or replace) the checker called `name`."""
        checker = _new_checker(name, checker, timeout, retries)
        with self._lock:
            self.checkers[name] = checker

    def _registered(self):
        """The registered checkers. An entry that code written for pihace 1.0.0 set whole,
        ``hc.checkers[name] = {"checker": f, "timeout": 5, "retries": 2}``, is checked as
        register() checks it and replaced by a _Checker here."""
        with self._lock:
            for name, entry in list(self.checkers.items()):
                if isinstance(entry, _Checker):
                    continue
                if not isinstance(entry, collections.abc.Mapping) or "checker" not in entry:
                    raise ValueError(f"hc.checkers[{name!r}] must be a dict with a \"checker\" "
                                     f"(and optionally \"timeout\" and \"retries\"), got "
                                     f"{type(entry).__name__}")
                self.checkers[name] = _new_checker(name, entry["checker"],
                                                   entry.get("timeout", 5), entry.get("retries", 2))
            return list(self.checkers.values())

    def _run_checkers(self):
        """[(name, its entry in the report)] for every checker, run at once."""
        checkers = self._registered()
        # Runs report their end on this queue: waiting on it is much cheaper
        # than concurrent.futures.wait(), which matters for fast checkers.
        ended = queue.SimpleQueue()
        began = time.monotonic()
        results = pending = [_Attempts(checker, ended.put, began) for checker in checkers]
        while pending:
            now = time.monotonic()
            pending = [attempts for attempts in pending if not attempts.advance(now, began)]
            if pending:
                try:
                    ended.get(timeout=_wait_time(pending))
                except queue.Empty:
                    pass
        return [(attempts.checker.name, attempts.outcome) for attempts in results]

    async def _run_checkers_async(self):
        """_run_checkers() in async code: async checkers run on the caller's loop (a
        connection made on that loop works in them); sync ones in threads, as always."""
        import asyncio  # here, not at the top: slow to import, and only async callers need it

        loop = asyncio.get_running_loop()
        checkers = self._registered()
        ended = asyncio.Event()

        def wake(_run):  # from a worker thread, or from the loop itself
            try:
                loop.call_soon_threadsafe(ended.set)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

        began = time.monotonic()
        results = pending = [_Attempts(checker, wake, began, loop) for checker in checkers]
        try:
            while pending:
                ended.clear()
                now = time.monotonic()
                pending = [attempts for attempts in pending if not attempts.advance(now, began)]
                if pending:
                    try:
                        await asyncio.wait_for(ended.wait(), _wait_time(pending))
                    except asyncio.TimeoutError:
                        pass
        finally:  # the caller gave up (cancelled): so do its async checkers
            for attempts in pending:
                if attempts.checker.is_async:
                    attempts.run.cancel()
        return [(attempts.checker.name, attempts.outcome) for attempts in results]

    def report(self):
        """Run every checker and return the report as a dict."""
        start = time.perf_counter()
        return self._report(self._run_checkers(), start)

    def _report(self, checks, start):
        passed = sum(check["status"] == "pass" for _, check in checks)
        report = {
            "status": calculate_status(passed, len(checks)),
            "timestamp": get_utc_timestamp(),
            "failure": {name: check["message"] for name, check in checks
                        if check["status"] == "fail"} or None,
            "rate": format_rate(passed, len(checks)),
            "duration": 0.0,  # set at the end; here for the order of the keys
            "system": (get_system_info() if self.system_info is None else self.system_info.read())
            if self.with_system else None,
            "component": {"name": self.component_name, "version": self.component_version}
            if self.component_name else None,  # pihace 1.0.0: None without a version
            "checks": dict(checks),
        }
        report["duration"] = time.perf_counter() - start
        return report

    def check(self, output="dict", pretty=True):
        """Run every checker; return the report as "dict", "json" or "str" (pihace 1.0.0's
        formats), or "health+json", "prometheus" or "nagios" (see format_report).

        Callable from any thread, and from inside a running event loop (which
        it blocks for the duration: prefer ``await check_async()`` there).
        """
        output = _output_name(output)
        return format_report(self.report(), output, pretty)

    async def check_async(self, output="dict", pretty=True):
        """check() for async code: async checkers run on the running loop, with their
        timeouts and retries; sync ones in threads, so the loop is never blocked."""
        output = _output_name(output)
        start = time.perf_counter()
        return format_report(self._report(await self._run_checkers_async(), start), output, pretty)

    _check_async = check_async  # pihace 1.0.0's name, which its providers call

    async def run_checker_with_retries(self, name, checker, retries, timeout):
        """pihace 1.0.0's public helper: run one checker on the running loop with
        `retries` extra attempts and a `timeout` per attempt (None: none); True
        when it passed, else (False, reason)."""
        import asyncio  # here, not at the top: slow to import, and only async callers need it

        one = _Checker(str(name), checker, _timeout("timeout", timeout), _number(
            "retries", retries, lambda v: v >= 0, "an integer >= 0", int))
        woken = asyncio.Event()
        loop = asyncio.get_running_loop()
        attempts = _Attempts(one, lambda _run: loop.call_soon_threadsafe(woken.set),
                             time.monotonic(), loop)
        while True:
            woken.clear()
            if attempts.advance(time.monotonic(), 0.0):
                outcome = attempts.outcome
                return True if outcome["status"] == "pass" else (False, outcome["message"])
            try:
                await asyncio.wait_for(woken.wait(), _wait_time([attempts]))
            except asyncio.TimeoutError:
                pass


def format_report(report, output="dict", pretty=True):
    """A report dict as itself, JSON, pihace 1.0.0's lines of text ("str"), or the formats
    of other tools: "health+json", "prometheus", "nagios" (the functions below)."""
    output = _output_name(output)
    if output == "dict":
        return report
    if output == "json":
        import json  # here, not at the top: slow to import (see the imports)

        return json.dumps(report, indent=4 if pretty else None)
    if output == "health+json":
        return format_health_json(report, pretty)
    if output == "prometheus":
        return format_prometheus(report)
    if output == "nagios":
        return format_nagios(report)
    lines = [f"Status: {report['status']} ({report['rate']} healthy)",
             f"Timestamp: {report['timestamp']}"]
    if report["failure"]:
        lines.append("Failures:")
        lines.extend(f" - {_printable(name)}: {_printable(reason)}"
                     for name, reason in report["failure"].items())
    if report["component"]:
        lines.append("Component: " + " ".join(_printable(part) for part in (
            report["component"]["name"], report["component"]["version"]) if part is not None))
    if report["system"]:
        lines.append("System: CPU {cpu_usage}, Mem {memory_usage}, Disk {disk_usage}, Free Mem: "
                     "{memory_available}, Python {python_version}, OS: {os}".format_map(report["system"]))
    return "\n".join(lines)  # one line each: names and reasons can forge none


# The report in the formats of other tools. Each takes the dict that check() returns
# (`checks` entries included) and nothing else, so that `pihace check`, the HTTP server
# and callers with a report from elsewhere share them.

def mark_optional(report, names):
    """A copy of `report` in which the checks called `names` are optional: marked
    ``"optional": true``, and a failing one makes the status Partially Available, never
    Unavailable. The status then follows the required checks: Available when they and
    the optional ones all passed, Unavailable when every required one failed (and there
    is one), else Partially Available. ValueError names an optional check that is not
    in the report."""
    names, checks = set(names), report.get("checks") or {}
    unknown = sorted(names - set(checks))
    if unknown:
        raise ValueError(f"no check called {_printable(', '.join(map(str, unknown)))} "
                         "to make optional")
    if not names:
        return report
    checks = {name: dict(check, optional=True) if name in names else check
              for name, check in checks.items()}
    required = [check["status"] == "pass" for name, check in checks.items() if name not in names]
    if all(check["status"] == "pass" for check in checks.values()):
        status = "Available"
    elif required and not any(required):
        status = "Unavailable"
    else:
        status = "Partially Available"
    return dict(report, status=status, checks=checks)


def required_checks_passed(report):
    """Did every check that is not optional pass? (Available, when none is optional.)"""
    return all(check["status"] == "pass" for check in (report.get("checks") or {}).values()
               if not check.get("optional"))


_HEALTH_STATUS = {"Available": "pass", "Partially Available": "warn", "Unavailable": "fail"}


def _system_figures(system):
    """[(name, value in base units, Prometheus unit suffix, help)] of a report's `system`
    part, from pihace 1.0.0's strings ("16.8%", "23784.1 MB", "79.08 GB"); figures that
    were not measured (None) or cannot be read are left out."""
    scales = (("cpu_usage", "%", 0.01, "cpu_usage_ratio", "CPU busy time since the previous "
               "report, 0 to 1"),
              ("memory_usage", "%", 0.01, "memory_usage_ratio", "memory in use, 0 to 1"),
              ("memory_available", " MB", 1024 ** 2, "memory_available_bytes",
               "memory available to new processes"),
              ("disk_usage", "%", 0.01, "disk_usage_ratio", "disk space in use, 0 to 1"),
              ("disk_available", " GB", 1024 ** 3, "disk_available_bytes", "free disk space"))
    figures = []
    for key, suffix, scale, name, text in scales:
        value = (system or {}).get(key)
        if isinstance(value, str) and value.endswith(suffix):
            try:
                number = float(value[:-len(suffix)]) * scale
            except ValueError:
                continue
            figures.append((name, round(number, 6) if scale < 1 else round(number), text))
    return figures


def _epoch(timestamp):
    """Seconds since the epoch of a report's timestamp (``2026-05-01T12:34:56.789123Z``),
    or None if it is not one."""
    import calendar  # here, not at the top: only these formats need it

    try:  # not time.strptime: its first use is not safe in two threads at once
        whole, _, fraction = timestamp.rstrip("Z").partition(".")
        if len(whole) != 19 or whole[4::3] != "--T::" or not fraction.isdigit():
            return None
        seconds = calendar.timegm(tuple(int(whole[start:start + 2 + 2 * (start == 0)])
                                        for start in (0, 5, 8, 11, 14, 17)))
        return seconds + float(f"0.{fraction}")
    except (AttributeError, TypeError, ValueError):
        return None


def format_health_json(report, pretty=True):
    """The report as application/health+json (draft-inadarei-api-health-check-06):
    status pass / warn / fail, one ``"NAME:responseTime"`` entry per check, system
    figures as ``cpu:utilization`` and the like."""
    import json  # here, not at the top: slow to import (see the imports)

    component = report.get("component") or {}
    health = {"status": _HEALTH_STATUS.get(report["status"], "fail")}
    if component.get("version") is not None:
        health["version"] = str(component["version"])
    if component.get("name") is not None:
        health["serviceId"] = str(component["name"])
        health["description"] = f"health of {component['name']}"
    if report.get("failure"):
        health["output"] = "; ".join(f"{name}: {reason}" for name, reason in
                                     report["failure"].items())
    checks = {}
    for name, check in (report.get("checks") or {}).items():
        entry = {"componentId": name, "observedValue": check.get("duration_ms"),
                 "observedUnit": "ms",
                 "status": "pass" if check["status"] == "pass"
                 else "warn" if check.get("optional") else "fail",
                 "time": report["timestamp"]}
        if check["status"] != "pass" and check.get("message") is not None:
            entry["output"] = check["message"]  # the draft: only for warn and fail
        checks[f"{name}:responseTime"] = [entry]
    for key, component_id, unit in (("cpu_usage", "cpu", "percent"),
                                    ("memory_usage", "memory", "percent"),
                                    ("disk_usage", "disk", "percent")):
        value = (report.get("system") or {}).get(key)
        if isinstance(value, str) and value.endswith("%"):
            checks[f"{component_id}:utilization"] = [{
                "componentType": "system", "observedValue": float(value[:-1]),
                "observedUnit": unit, "status": "pass", "time": report["timestamp"]}]
    if checks:
        health["checks"] = checks
    return json.dumps(health, indent=4 if pretty else None)


def _label(value):
    """A Prometheus label value, escaped: backslash, double quote and line feed."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_prometheus(report):
    """The report in Prometheus' text format 0.0.4, without timestamps (as the textfile
    collector of node_exporter wants): gauges named after their base unit."""
    lines = []

    def metric(name, text, samples):
        lines.append(f"# HELP pihace_{name} {text}")
        lines.append(f"# TYPE pihace_{name} gauge")
        for labels, value in samples:
            shown = ",".join(f'{key}="{_label(label)}"' for key, label in labels)
            lines.append(f"pihace_{name}{{{shown}}} {value!r}" if labels
                         else f"pihace_{name} {value!r}")

    component = report.get("component") or {}
    checks = report.get("checks") or {}
    metric("up", "1 when the report's status is Available, else 0",
           [((), int(report["status"] == "Available"))])
    metric("status", "1 for the report's status, 0 for the others",
           [((("status", status),), int(report["status"] == status))
            for status in _HEALTH_STATUS])
    metric("info", "who reports: the component's name and version, pihace's version",
           [((("name", component.get("name") or ""), ("version", component.get("version") or ""),
              ("pihace_version", __version__)), 1)])
    metric("checks", "checks in the report", [((), len(checks))])
    metric("checks_passed", "checks that passed", [((), sum(
        check["status"] == "pass" for check in checks.values()))])
    if report.get("duration") is not None:
        metric("report_duration_seconds", "time taken by the whole report",
               [((), round(float(report["duration"]), 6))])
    epoch = _epoch(report.get("timestamp"))
    if epoch is not None:
        metric("check_last_run_timestamp_seconds", "when the checks last ran, seconds since "
               "the epoch", [((), round(epoch, 3))])
    if checks:
        metric("check_up", "1 when the check passed, else 0",
               [((("check", name),), int(check["status"] == "pass"))
                for name, check in checks.items()])
        metric("check_duration_seconds", "time the check took, retries included",
               [((("check", name),), round(check.get("duration_ms", 0) / 1000, 6))
                for name, check in checks.items()])
        metric("check_attempts", "attempts the check took", [
            ((("check", name),), check.get("attempts", 1)) for name, check in checks.items()])
        metric("check_optional", "1 when a failure of the check cannot make the status "
               "Unavailable", [((("check", name),), int(bool(check.get("optional"))))
                               for name, check in checks.items()])
    for name, value, text in _system_figures(report.get("system")):
        metric(f"system_{name}", text, [((), value)])
    return "\n".join(lines) + "\n"


_NAGIOS_STATES = {"Available": "OK", "Partially Available": "WARNING", "Unavailable": "CRITICAL"}


def _nagios_text(text):
    """Free text for a Nagios line: control characters escaped, no | (it starts perfdata)."""
    return _printable(text).replace("|", "/")


def _perf_label(name):
    """A perfdata label: quoted, without = or quotes (the guidelines allow neither)."""
    return "'" + _nagios_text(name).replace("'", "").replace("=", "_") + "'"


def format_nagios(report):
    """The report as a Monitoring Plugins status line with performance data:
    ``PIHACE OK - 2/2 checks passed | 'db'=1;;1:;0;1 'db_seconds'=0.0019s;;;0``.
    A failing required check is critical (crit 1:), an optional one a warning (warn 1:)."""
    state = _NAGIOS_STATES.get(report["status"], "UNKNOWN")
    checks = report.get("checks") or {}
    passed = sum(check["status"] == "pass" for check in checks.values())
    line = f"PIHACE {state} - {passed}/{len(checks)} checks passed"
    failures = report.get("failure") or {}
    if failures:
        line += "; " + ", ".join(f"{_nagios_text(name)}: {_nagios_text(reason)}"
                                 for name, reason in failures.items())
    perfdata = []
    for name, check in checks.items():
        thresholds = "1:;" if check.get("optional") else ";1:"
        perfdata.append(f"{_perf_label(name)}={int(check['status'] == 'pass')};{thresholds};0;1")
        seconds = check.get("duration_ms", 0) / 1000
        perfdata.append(f"{_perf_label(str(name) + '_seconds')}={seconds:.6f}s;;;0")
    return line + (" | " + " ".join(perfdata) if perfdata else "")


# ---------------------------------------------------------------------------
# checkers: callables for HealthCheck.register() that never raise for what they
# check: True or (True, detail) when it is fine, else (False, reason). The AMQP
# checker comes after the transport it uses.
# ---------------------------------------------------------------------------

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
        import socket  # here, not at the top: slow to import (connect_tcp loaded it already)

        left = self.deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("timed out")
        self.sock.settimeout(left)

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
        sock = connect_tcp((host, port), max(0.001, deadline - time.monotonic()))
        try:
            if parts.scheme == "https":
                import ssl  # here, not at the top: only https:// needs it

                sock.settimeout(max(0.001, deadline - time.monotonic()))
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
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
        from urllib.parse import urlsplit  # here, not at the top: slow to import

        try:
            parts = urlsplit(url)
            valid = parts.scheme in ("http", "https") and parts.hostname and parts.port != 0
        except (TypeError, ValueError, AttributeError):  # not a string, or a bad port
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


def _refuse_stray_at(parts, what):
    """A ValueError for a URL with an @ after its host (two in the host part, or one in the
    path, query or fragment): an unencoded / ? # or @ in its password, which would otherwise
    be read as a host, a port or a path, and shown as one."""
    if parts.netloc.count("@") > 1 or "@" in parts.path + parts.query + parts.fragment:
        raise ValueError(f"{what} has an @ after the host: percent-encode '/', '?', '#' and '@' "
                         "in the user name and password (%2F, %3F, %23, %40)")


def _url_parts(url, schemes, default_port, what):
    """(user, password, host, port, path) of a database URL, percent-decoded; a ValueError
    that never shows the user information when it cannot be read."""
    from urllib.parse import unquote, urlsplit  # here, not at the top: slow to import

    try:
        parts = urlsplit(url)
        port = parts.port or default_port
        valid = parts.scheme in schemes and parts.hostname
    except (TypeError, ValueError, AttributeError):  # not a string, or a bad port
        valid = False
    if not valid:
        raise ValueError(f"{what} must be a {schemes[0]}://user:password@host:port/... URL")
    _refuse_stray_at(parts, what)
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
        """Seconds to the one deadline of the whole exchange; socket.timeout once it passed
        (a server that floods, or trickles a byte at a time, gets no more time)."""
        import socket  # here, not at the top: slow to import (connect_tcp loaded it already)

        left = self.deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("timed out")
        return left

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
        from urllib.parse import unquote, urlsplit  # here, not at the top: slow to import

        self.timeout = _seconds("timeout", timeout)
        self.dsn = dsn
        try:
            parts = urlsplit(dsn)
            valid = parts.scheme in ("mongodb", "mongodb+srv")
        except (TypeError, ValueError, AttributeError):
            valid = False
        if valid:
            _refuse_stray_at(parts, "dsn")
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
        sock = connect_tcp(address, max(0.001, deadline - time.monotonic()))
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
        import socket  # here, not at the top: slow to import (connect_tcp loaded it already)

        def time_left():  # each send and read gets what is left, and none once it passed
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("timed out")
            return left

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
    from urllib.parse import urlsplit  # here, not at the top: slow to import

    try:
        parts = urlsplit(url)
        valid = parts.scheme in ("http", "https") and parts.hostname and parts.port != 0
    except (TypeError, ValueError, AttributeError):
        valid = False
    if not valid:
        raise ValueError(f"{what} must be an http:// or https:// URL with a host and a valid port")
    _refuse_stray_at(parts, what)
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
                    self.url, "/ping", self._headers, max(0.001, deadline - time.monotonic()))
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


# ---------------------------------------------------------------------------
# AMQP constants
# ---------------------------------------------------------------------------

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
FRAME_END = 0xCE
FRAME_MIN_SIZE = 4096
FRAME_OVERHEAD = 8  # type, channel, size and frame-end around every payload
HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"
DEFAULT_FRAME_MAX = 131072  # used until Tune, and when the broker sets no limit
DEFAULT_CHANNEL_MAX = 2047
BASIC_CLASS = 60

# The methods pihace sends (>), accepts (<) or both: class id, method id, name, then the
# arguments as name:type; consecutive bits share an octet (least significant first): a,b:bits.
_METHOD_TABLE = [
    "10 10 < Connection.Start version_major:octet version_minor:octet server_properties:table "
    "mechanisms:longstr locales:longstr",
    "10 11 > Connection.Start-Ok client_properties:table mechanism:shortstr response:longstr "
    "locale:shortstr",
    "10 20 < Connection.Secure challenge:longstr",
    "10 30 < Connection.Tune channel_max:short frame_max:long heartbeat:short",
    "10 31 > Connection.Tune-Ok channel_max:short frame_max:long heartbeat:short",
    "10 40 > Connection.Open virtual_host:shortstr capabilities:shortstr insist:bits",
    "10 41 < Connection.Open-Ok known_hosts:shortstr",
    "10 50 <> Connection.Close reply_code:short reply_text:shortstr class_id:short method_id:short",
    "10 51 <> Connection.Close-Ok",
    "10 60 < Connection.Blocked reason:shortstr",
    "10 61 < Connection.Unblocked",
    "20 10 > Channel.Open out_of_band:shortstr",
    "20 11 < Channel.Open-Ok channel_id:longstr",
    "20 20 < Channel.Flow active:bits",
    "20 21 > Channel.Flow-Ok active:bits",
    "20 40 <> Channel.Close reply_code:short reply_text:shortstr class_id:short method_id:short",
    "20 41 <> Channel.Close-Ok",
    "40 10 > Exchange.Declare ticket:short exchange:shortstr type:shortstr "
    "passive,durable,auto_delete,internal,nowait:bits arguments:table",
    "40 11 < Exchange.Declare-Ok",
    "50 10 > Queue.Declare ticket:short queue:shortstr "
    "passive,durable,exclusive,auto_delete,nowait:bits arguments:table",
    "50 11 < Queue.Declare-Ok queue:shortstr message_count:long consumer_count:long",
    "50 20 > Queue.Bind ticket:short queue:shortstr exchange:shortstr routing_key:shortstr "
    "nowait:bits arguments:table",
    "50 21 < Queue.Bind-Ok",
    "60 10 > Basic.Qos prefetch_size:long prefetch_count:short global:bits",
    "60 11 < Basic.Qos-Ok",
    "60 20 > Basic.Consume ticket:short queue:shortstr consumer_tag:shortstr "
    "no_local,no_ack,exclusive,nowait:bits arguments:table",
    "60 21 < Basic.Consume-Ok consumer_tag:shortstr",
    "60 30 <> Basic.Cancel consumer_tag:shortstr nowait:bits",
    "60 31 <> Basic.Cancel-Ok consumer_tag:shortstr",
    "60 40 > Basic.Publish ticket:short exchange:shortstr routing_key:shortstr "
    "mandatory,immediate:bits",
    "60 50 < Basic.Return reply_code:short reply_text:shortstr exchange:shortstr "
    "routing_key:shortstr",
    "60 60 < Basic.Deliver consumer_tag:shortstr delivery_tag:longlong redelivered:bits "
    "exchange:shortstr routing_key:shortstr",
    "60 80 <> Basic.Ack delivery_tag:longlong multiple:bits",
    "60 120 < Basic.Nack delivery_tag:longlong multiple,requeue:bits",
    "85 10 > Confirm.Select nowait:bits",
    "85 11 < Confirm.Select-Ok",
]
_METHODS = [line.split() for line in _METHOD_TABLE]
_METHOD_NAMES = {(int(c), int(m)): name for c, m, _, name, *_ in _METHODS}
_METHOD_IDS = {name: key for key, name in _METHOD_NAMES.items()}
_METHOD_ARGUMENTS = {name: [(argument.split(",") if kind == "bits" else argument, kind)
                            for argument, kind in (item.split(":") for item in signature)]
                     for _, _, _, name, *signature in _METHODS}
_FROM_BROKER = {name for _, _, way, name, *_ in _METHODS if "<" in way}

# Basic content properties in flag order: bit 15 (content_type) downwards.
BASIC_PROPERTIES = (
    ("content_type", "shortstr"), ("content_encoding", "shortstr"), ("headers", "table"),
    ("delivery_mode", "octet"), ("priority", "octet"), ("correlation_id", "shortstr"),
    ("reply_to", "shortstr"), ("expiration", "shortstr"), ("message_id", "shortstr"),
    ("timestamp", "timestamp"), ("type", "shortstr"), ("user_id", "shortstr"),
    ("app_id", "shortstr"), ("cluster_id", "shortstr"),
)


# ---------------------------------------------------------------------------
# AMQP wire types
# ---------------------------------------------------------------------------

_octet, _short, _long, _longlong = (struct.Struct(f">{c}") for c in "BHIQ")
_INTEGERS = {"octet": _octet, "short": _short, "long": _long, "longlong": _longlong,
             "timestamp": _longlong}
# RabbitMQ's field types (its "s" is a signed 16-bit integer, unlike the 0-9-1 text)
_FIELD_STRUCTS = {tag.encode(): struct.Struct(">" + code) for tag, code in (
    ("b", "b"), ("B", "B"), ("s", "h"), ("u", "H"), ("I", "i"), ("i", "I"), ("l", "q"),
    ("L", "Q"), ("T", "Q"), ("f", "f"), ("d", "d"), ("t", "?"))}
_MAX_TABLE_DEPTH = 16


def encode_shortstr(value):
    data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    if len(data) > 255:
        raise ValueError(f"{_text(value)[:40]!r}... is {len(data)} bytes long; "
                         "AMQP short strings hold at most 255")
    return bytes((len(data),)) + data


def encode_longstr(value):
    data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    return _long.pack(len(data)) + data


def _encode_field_value(key, value):
    # Only the types every broker reads: t I l S F V. bool before int: bool is an int.
    if value is None:
        return b"V"
    if isinstance(value, bool):
        return b"t\x01" if value else b"t\x00"
    if isinstance(value, int):
        if -2 ** 31 <= value < 2 ** 31:
            return b"I" + _FIELD_STRUCTS[b"I"].pack(value)
        if -2 ** 63 <= value < 2 ** 63:
            return b"l" + _FIELD_STRUCTS[b"l"].pack(value)
        raise ValueError(f"table value of {key!r} does not fit in 64 bits: {value}")
    if isinstance(value, (str, bytes)):
        return b"S" + encode_longstr(value)
    if isinstance(value, dict):
        return b"F" + encode_table(value)
    raise ValueError(f"table value of {key!r} is a {type(value).__name__}; "
                     "AMQP tables here hold bool, int, str, bytes, dict or None")


def encode_table(table):
    payload = b"".join(encode_shortstr(str(key)) + _encode_field_value(key, value)
                       for key, value in (table or {}).items())
    return _long.pack(len(payload)) + payload


_ENCODERS = dict({kind: packer.pack for kind, packer in _INTEGERS.items()},
                 shortstr=encode_shortstr, longstr=encode_longstr, table=encode_table)
_EMPTY = {"shortstr": b"", "longstr": b"", "table": None}  # what a missing argument sends


def encode_method(name, **values):
    """A method frame's payload: class id, method id, then the arguments."""
    class_id, method_id = _METHOD_IDS[name]
    parts = [_short.pack(class_id), _short.pack(method_id)]
    for argument, kind in _METHOD_ARGUMENTS[name]:
        if kind == "bits":  # consecutive bits share one octet, least significant first
            octet = sum(1 << i for i, bit in enumerate(argument) if values.get(bit))
            parts.append(bytes((octet,)))
        else:
            parts.append(_ENCODERS[kind](values.get(argument) or _EMPTY.get(kind, 0)))
    return b"".join(parts)


class _Reader:
    """Reads spec types from a payload; any shortfall is a RemoteProtocolError."""

    __slots__ = ("data", "offset")

    def __init__(self, data, offset=0):
        self.data, self.offset = data, offset

    def take(self, size):
        end = self.offset + size
        if end > len(self.data):
            raise RemoteProtocolError(f"truncated frame: needed {size} more bytes at offset "
                                      f"{self.offset} of {len(self.data)}")
        chunk = self.data[self.offset:end]
        self.offset = end
        return bytes(chunk)

    def unpack(self, packer):
        return packer.unpack(self.take(packer.size))[0]

    def shortstr(self):
        return self.take(self.unpack(_octet)).decode("utf-8", "replace")

    def longstr(self):
        return self.take(self.unpack(_long))

    def read(self, kind):
        """A value of a spec type other than bit, e.g. "short" or "table"."""
        packer = _INTEGERS.get(kind)
        return self.unpack(packer) if packer else getattr(self, kind)()

    def _items(self, read):
        """read(reader) for each item in a longstr (a table's or an array's), in order."""
        reader, items = _Reader(self.longstr()), []
        while reader.offset < len(reader.data):
            items.append(read(reader))
        return items

    def table(self, depth=0):
        return dict(self._items(lambda reader: (reader.shortstr(), reader.field_value(depth))))

    def field_value(self, depth):
        if depth > _MAX_TABLE_DEPTH:  # tables and arrays nested in each other
            raise RemoteProtocolError("field table nested too deeply")
        tag = self.take(1)
        if tag in _FIELD_STRUCTS:
            return self.unpack(_FIELD_STRUCTS[tag])
        if tag == b"S":
            return self.longstr().decode("utf-8", "replace")
        if tag == b"x":
            return self.longstr()
        if tag == b"F":
            return self.table(depth + 1)
        if tag == b"A":
            return self._items(lambda reader: reader.field_value(depth + 1))
        if tag == b"D":
            scale, value = self.unpack(_octet), self.unpack(_FIELD_STRUCTS[b"I"])
            return value / 10 ** scale
        if tag == b"V":
            return None
        raise RemoteProtocolError(f"unknown field table tag {tag!r}")

    def arguments(self, arguments):
        values = {}
        for name, kind in arguments:
            if kind == "bits":
                octet = self.unpack(_octet)
                values.update((bit, bool(octet >> i & 1)) for i, bit in enumerate(name))
            else:
                values[name] = self.read(kind)
        return values


class PropertiesTemplate:
    """Encodes content properties, the ones that never change only once.

    `fixed` maps property names to values; `varying` names the properties
    given to encode() for each message (a None value leaves one out).
    """

    def __init__(self, fixed=None, varying=()):
        fixed = fixed or {}
        self.flags, self.head = 0, b""  # the fixed properties before the first varying one
        self.varying = []  # [name, encoder, flag, the fixed properties after it]
        for index, (name, kind) in enumerate(BASIC_PROPERTIES):
            flag = 1 << (15 - index)
            if name in varying:
                self.varying.append([name, _ENCODERS[kind], flag, b""])
            elif fixed.get(name) is not None:
                self.flags |= flag
                if self.varying:
                    self.varying[-1][3] += _ENCODERS[kind](fixed[name])
                else:
                    self.head += _ENCODERS[kind](fixed[name])

    def encode(self, **values):
        flags, parts = self.flags, [self.head]
        for name, encode, flag, fixed in self.varying:
            value = values.get(name)
            if value is not None:
                flags |= flag
                parts.append(encode(value))
            parts.append(fixed)
        return _short.pack(flags) + b"".join(parts)


def encode_properties(properties):
    """The property flags and values of a content header, from a dict."""
    return PropertiesTemplate(varying=properties).encode(**properties)


_PROPERTY_FLAGS = [(1 << (15 - index), name, _INTEGERS.get(kind, kind))
                   for index, (name, kind) in enumerate(BASIC_PROPERTIES)]
_HEADERS_SEEN = {}  # the bytes of a headers table of plain values -> its decoded dict


def _headers(reader):
    """A headers table; those of plain values (say {"status": "Available"}), which come
    again and again, are decoded once."""
    data, offset = reader.data, reader.offset
    end = offset + 4 + (_long.unpack_from(data, offset)[0] if offset + 4 <= len(data) else 0)
    raw = data[offset:end] if end <= len(data) else None
    table = _HEADERS_SEEN.get(raw)
    if table is None:
        table = reader.table()
        if raw is not None and len(raw) <= 256 and not any(
                isinstance(value, (dict, list)) for value in table.values()):
            if len(_HEADERS_SEEN) >= 256:
                _HEADERS_SEEN.clear()
            _HEADERS_SEEN[raw] = dict(table)
        return table
    reader.offset = end
    return dict(table)


@functools.lru_cache(maxsize=64)
def _properties_present(flags):
    """[(name, kind)] of the properties that property flags say are there, in order."""
    return [(name, kind) for flag, name, kind in _PROPERTY_FLAGS if flags & flag]


def decode_properties(reader):
    flags = reader.unpack(_short)
    if flags & 1:
        raise RemoteProtocolError("content header with continued property flags")
    properties, data = {}, reader.data
    for name, kind in _properties_present(flags):
        offset = reader.offset
        if kind == "shortstr" and offset < len(data) and offset + data[offset] < len(data):
            end = offset + 1 + data[offset]  # the common cases, read inline
            properties[name] = str(data[offset + 1:end], "utf-8", "replace")
            reader.offset = end
        elif kind == "table":
            properties[name] = _headers(reader)
        elif isinstance(kind, str):
            properties[name] = reader.read(kind)
        else:  # an integer's struct
            properties[name] = reader.unpack(kind)
    return properties


# ---------------------------------------------------------------------------
# AMQP frames
# ---------------------------------------------------------------------------

_frame_head = struct.Struct(">BHI")
_content_head = struct.Struct(">HHQ")


def encode_frame(frame_type, channel, payload):
    return _frame_head.pack(frame_type, channel, len(payload)) + payload + b"\xce"


def encode_content(channel, properties, body, frame_max):
    """The content header frame and body frames of one message.

    `properties` is encoded property bytes (see encode_properties). Body frames
    hold at most frame_max - 8 bytes; an empty body sends none.
    """
    frames = [encode_frame(FRAME_HEADER, channel,
                           _content_head.pack(BASIC_CLASS, 0, len(body)) + properties)]
    step = frame_max - FRAME_OVERHEAD
    for start in range(0, len(body), step):
        frames.append(encode_frame(FRAME_BODY, channel, body[start:start + step]))
    return b"".join(frames)


class FrameDecoder:
    """Cuts frames out of a byte stream; next_frame() is None until one is whole."""

    def __init__(self, frame_max=DEFAULT_FRAME_MAX):
        self.frame_max = frame_max
        self._buffer = bytearray()

    def feed(self, data):
        self._buffer += data

    @property
    def pending(self):
        return len(self._buffer)

    def next_frame(self):
        """(type, channel, payload bytes) of the next whole frame, or None."""
        buffer = self._buffer
        if len(buffer) < 7:
            return None
        frame_type, channel, size = _frame_head.unpack_from(buffer)
        if frame_type not in (FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT):
            if buffer[:4] == b"AMQP":  # a protocol header: the server wants another version
                if len(buffer) < 8:
                    return None
                raise RemoteProtocolError(f"the server only speaks AMQP {buffer[5]}.{buffer[6]}."
                                          f"{buffer[7]} (protocol id {buffer[4]}), not AMQP 0-9-1")
            if buffer[0] in (0x15, 0x16) and buffer[1] == 3:  # a TLS record: alert, handshake
                raise RemoteProtocolError("the server speaks TLS on this port: use amqps://")
            raise RemoteProtocolError(f"unknown frame type {frame_type} "
                                      f"(bytes {bytes(buffer[:16])!r}): not an AMQP 0-9-1 broker?")
        if size + FRAME_OVERHEAD > self.frame_max:
            raise RemoteProtocolError(f"frame of {size + FRAME_OVERHEAD} bytes is larger than "
                                      f"the frame_max of {self.frame_max}")
        end = 7 + size
        if len(buffer) <= end:
            return None
        if buffer[end] != FRAME_END:
            raise RemoteProtocolError(f"frame does not end with 0xCE but {buffer[end]:#04x}")
        payload = bytes(buffer[7:end])
        del buffer[:end + 1]
        return frame_type, channel, payload


# ---------------------------------------------------------------------------
# AMQP protocol: a state machine with no I/O; bytes in, events and bytes out
# ---------------------------------------------------------------------------

class Method:
    """An event: a method the broker sent, with the content it carried if any."""

    __slots__ = ("channel", "name", "args", "properties", "body_size")

    def __init__(self, channel, name, args, properties=None, body_size=0):
        self.channel, self.name, self.args = channel, name, args
        self.properties, self.body_size = properties, body_size

    def __repr__(self):
        return f"Method({self.channel}, {self.name!r}, {self.args!r})"


class ConnectionLost:
    """An event: the byte stream ended (receive_data(b""))."""

    def __repr__(self):
        return "ConnectionLost()"


class Acked:
    """An event: the broker took responsibility for a message published in confirm mode."""

    __slots__ = ("channel", "message_id", "delivery_tag")

    def __init__(self, channel, message_id, delivery_tag):
        self.channel, self.message_id, self.delivery_tag = channel, message_id, delivery_tag

    def __repr__(self):
        return f"{type(self).__name__}({self.channel}, {self.message_id!r}, {self.delivery_tag})"


class Nacked(Acked):
    """An event: the broker refused a message published in confirm mode (Basic.Nack)."""

    __slots__ = ()


class Returned(Acked):
    """An event: nobody took a mandatory message (Basic.Return). In confirm mode it
    comes when the broker's Ack does, in place of Acked; delivery_tag is then set."""

    __slots__ = ("reply_code", "reply_text", "exchange", "routing_key")

    def __init__(self, channel, message_id, args):
        super().__init__(channel, message_id, None)
        self.reply_code, self.reply_text = args["reply_code"], args["reply_text"]
        self.exchange, self.routing_key = args["exchange"], args["routing_key"]


class Delivery:
    """An event: a message the broker delivered to one of our consumers (Basic.Deliver
    with its content). `body` is None when the message was larger than the consumer's
    max_body_size: it was counted, not kept; `body_size` says how large it was."""

    __slots__ = ("channel", "consumer_tag", "delivery_tag", "redelivered", "exchange",
                 "routing_key", "properties", "body", "body_size")

    def __init__(self, channel, args, properties, body, body_size):
        self.channel, self.consumer_tag = channel, args["consumer_tag"]
        self.delivery_tag, self.redelivered = args["delivery_tag"], args["redelivered"]
        self.exchange, self.routing_key = args["exchange"], args["routing_key"]
        self.properties, self.body, self.body_size = properties, body, body_size

    def __repr__(self):
        return (f"Delivery({self.channel}, {self.consumer_tag!r}, {self.delivery_tag}, "
                f"{self.body_size} bytes)")


class _Channel:
    __slots__ = ("state", "expecting", "confirming", "next_tag", "unconfirmed", "returned",
                 "consumers", "consuming", "last_delivery", "unacked")

    def __init__(self):
        self.state = "opening"  # opening -> open -> closing (by the client) -> gone
        self.expecting = "Channel.Open-Ok"  # the reply to the synchronous method sent last
        self.confirming = False
        self.next_tag = 1  # delivery tags count publishes from Confirm.Select on
        self.unconfirmed = {}  # delivery tag -> message id, oldest first
        self.returned = {}  # message id -> Returned, until the broker's Ack for it
        self.consumers = {}  # consumer tag -> (no_ack, max_body_size), from Consume-Ok on
        self.consuming = None  # (no_ack, max_body_size) of the Basic.Consume awaiting its Ok
        self.last_delivery = 0  # the broker numbers its deliveries from 1 on each channel
        self.unacked = set()  # delivery tags not acknowledged yet


# The synchronous methods a client sends on a channel, and the reply each waits for.
_REPLIES = {name: name + "-Ok" for name in _METHOD_IDS
            if name + "-Ok" in _FROM_BROKER and _METHOD_IDS[name][0] != 10}
_REPLY_NAMES = set(_REPLIES.values())
_ACK_HEAD = _short.pack(BASIC_CLASS) + _short.pack(80)  # Basic.Ack, sent once per batch
_DELIVER = _short.pack(BASIC_CLASS) + _short.pack(60)
_deliver_tag = struct.Struct(">QB")


def _deliver_arguments(payload):
    """The arguments of a Basic.Deliver payload (what _Reader.arguments would give, faster):
    consumer_tag shortstr, delivery_tag longlong, redelivered bit, exchange and routing_key
    shortstr."""
    try:
        end = 5 + payload[4]
        consumer = payload[5:end]
        tag, bits = _deliver_tag.unpack_from(payload, end)
        start = end + 10
        end = start + payload[start - 1]
        exchange = payload[start:end]
        start = end + 1
        end = start + payload[end]
    except (IndexError, struct.error):
        end = len(payload) + 1
    if end != len(payload):
        raise RemoteProtocolError(f"truncated frame: Basic.Deliver of {len(payload)} bytes"
                                  if end > len(payload) else
                                  f"Basic.Deliver has {len(payload) - end} bytes too many")
    return {"consumer_tag": str(consumer, "utf-8", "replace"), "delivery_tag": tag,
            "redelivered": bool(bits & 1), "exchange": str(exchange, "utf-8", "replace"),
            "routing_key": str(payload[start:end], "utf-8", "replace")}


class AMQPProtocol:
    """The client side of one AMQP 0-9-1 connection, with no I/O.

    Feed the broker's bytes to receive_data(), take events from next_event(),
    and send what data_to_send() returns. Replies the protocol requires
    (Start-Ok, Tune-Ok, Open, Close-Ok, heartbeats) are queued on their own.
    Time is passed in as `now` (seconds, any monotonic clock).

    It owns the connection's state: channels, the replies each one awaits, and
    publisher confirms (delivery tags are mapped back to message ids: Acked,
    Nacked and Returned events name the message). After a RemoteProtocolError
    it is in the "error" state and refuses further use.
    """

    def __init__(self, username="guest", password="guest", vhost="/", *, heartbeat=60,
                 frame_max=DEFAULT_FRAME_MAX, channel_max=DEFAULT_CHANNEL_MAX,
                 client_properties=None, mechanisms=("PLAIN",), locale="en_US"):
        self.username, self._password, self.vhost = username, password, vhost
        self.heartbeat, self.frame_max, self.channel_max = heartbeat, frame_max, channel_max
        self.client_properties = client_properties or {}
        self.mechanisms = mechanisms  # in order of preference: PLAIN and/or EXTERNAL
        self.mechanism = None  # the one chosen
        self.locale = locale
        # start -> tune -> opening -> open -> closing -> closed, or error from anywhere
        self.state = "start"
        self.error = None  # the RemoteProtocolError that put it in the error state
        self.server_properties = {}
        self.blocked = None  # the reason, while the broker blocks publishing
        self.channels = {}
        self._decoder = FrameDecoder(DEFAULT_FRAME_MAX)
        self._outbox = [PROTOCOL_HEADER]
        self._events = collections.deque()  # events made ahead: one Ack can confirm many
        self._publish_frames = {}
        self._content = None  # [Method, expected body size, received] while content arrives
        self._ended = False
        self._last_received = self._last_sent = None

    def __repr__(self):
        return f"<AMQPProtocol {self.username}@{self.vhost} {self.state}>"

    @property
    def is_open(self):
        return self.state == "open"

    def channel_is_open(self, channel):
        state = self.channels.get(channel)
        return state is not None and state.state == "open"

    def _refuse_if_broken(self, what):
        if self.state == "error":
            raise LocalProtocolError(f"cannot {what}: the connection broke the protocol "
                                     f"earlier ({self.error})")

    # -- bytes in, bytes out ------------------------------------------------

    def receive_data(self, data, now=0.0):
        """Bytes from the broker; b"" means the stream ended."""
        self._refuse_if_broken("receive data")
        if not data:
            self._ended = True
            return
        if self.state == "closed":
            return  # nothing more is read: keep memory bounded
        self._decoder.feed(data)
        self._last_received = now

    def data_to_send(self, now=0.0):
        data = b"".join(self._outbox)
        self._outbox.clear()
        if data:
            self._last_sent = now
        return data

    def tick(self, now):
        """Queue a heartbeat if one is due; the seconds until the next is due.

        A heartbeat goes out when the broker has heard nothing from us for three
        quarters of the heartbeat period, or, once it has heard nothing for a
        quarter, in answer to bytes from the broker. RabbitMQ sends its own every
        half period, so an idle connection answers those and wakes once per half
        period for both directions; RabbitMQ drops a peer only after two missed
        heartbeats. Raises TimeoutError when the broker has been silent for more
        than two heartbeat periods: the connection is dead even if the socket is
        not.
        """
        if not self.heartbeat or self.state not in ("open", "closing"):
            return None
        if self._last_received is None:
            self._last_received = now
        if self._last_sent is None:
            self._last_sent = now
        if now - self._last_received > 2 * self.heartbeat:
            raise TimeoutError(f"the broker sent nothing for {now - self._last_received:.0f}s "
                               f"(heartbeat {self.heartbeat}s): connection presumed dead")
        quiet = now - self._last_sent
        if quiet >= 0.75 * self.heartbeat or (
                quiet >= 0.25 * self.heartbeat and self._last_received > self._last_sent):
            self._outbox.append(HEARTBEAT_FRAME)
            self._last_sent = now
        return max(0.0, min(self._last_sent + 0.75 * self.heartbeat,
                            self._last_received + 2 * self.heartbeat) - now)

    def _send(self, channel, name, **values):
        self._outbox.append(encode_frame(FRAME_METHOD, channel, encode_method(name, **values)))

    # -- events ---------------------------------------------------------------

    def next_event(self):
        """The next event (Method, Acked, Nacked, Returned or ConnectionLost), or None
        while more bytes are needed."""
        self._refuse_if_broken("read events")
        try:
            return self._next_event()
        except RemoteProtocolError as exc:
            self.state, self.error = "error", exc
            raise

    def _next_event(self):
        while not self._events:
            frame = self._decoder.next_frame() if self.state != "closed" else None
            if frame is None:
                if self._ended:
                    self._ended = False
                    if self.state != "closed" and (self._decoder.pending or self._content):
                        # (once closed, what followed the Close is ignored, whole or cut)
                        raise RemoteProtocolError("the connection ended in the middle of a frame")
                    self.state = "closed"
                    return ConnectionLost()
                return None
            if self.state == "start" and frame[0] != FRAME_METHOD:
                raise RemoteProtocolError("expected Connection.Start, got a frame of type "
                                          f"{frame[0]}")
            event = self._handle_frame(*frame)
            if event is not None:
                self._events.append(event)
        return self._events.popleft()

    def _handle_frame(self, frame_type, channel, payload):
        if frame_type == FRAME_HEARTBEAT:
            if channel != 0:
                raise RemoteProtocolError(f"heartbeat frame on channel {channel}")
            return None
        if self._content is not None:
            return self._handle_content(frame_type, channel, payload)
        if frame_type != FRAME_METHOD:
            raise RemoteProtocolError(f"unexpected content frame (type {frame_type}) on "
                                      f"channel {channel}")
        if payload[:4] == _DELIVER:  # with every message: read without the generic reader
            method = Method(channel, "Basic.Deliver", _deliver_arguments(payload))
            self._content = [method, None, 0, self._on_deliver(method)]
            return None
        reader = _Reader(payload)
        key = (reader.unpack(_short), reader.unpack(_short))
        name = _METHOD_NAMES.get(key)
        if name not in _FROM_BROKER:
            raise RemoteProtocolError(f"unexpected method {name or '%d.%d' % key} from the broker")
        method = Method(channel, name, reader.arguments(_METHOD_ARGUMENTS[name]))
        if reader.offset != len(payload):
            raise RemoteProtocolError(f"{name} has {len(payload) - reader.offset} bytes too many")
        if name == "Basic.Return":
            self._check_channel(method, ("open", "closing"))
            self._content = [method, None, 0, None]
            return None
        if name == "Basic.Deliver":
            self._content = [method, None, 0, self._on_deliver(method)]
            return None
        return self._handle_method(method)

    def _on_deliver(self, method):
        """The list its body parts go to, or None when the body is not kept."""
        channel = self._check_channel(method, ("open", "closing"))
        tag, consumer = method.args["delivery_tag"], method.args["consumer_tag"]
        if tag <= channel.last_delivery:
            raise RemoteProtocolError(f"Basic.Deliver with delivery tag {tag} on channel "
                                      f"{method.channel}, after {channel.last_delivery}")
        if consumer not in channel.consumers:
            if channel.state == "closing":
                return None  # dropped with the rest of the channel's traffic
            raise RemoteProtocolError(f"Basic.Deliver to consumer {consumer!r} on channel "
                                      f"{method.channel}, which has no such consumer")
        channel.last_delivery = tag
        no_ack, _ = channel.consumers[consumer]
        if not no_ack:
            channel.unacked.add(tag)
        return []

    def _handle_content(self, frame_type, channel, payload):
        method, size, received, parts = self._content
        if channel != method.channel or frame_type == FRAME_METHOD or (
                (frame_type == FRAME_HEADER) != (size is None)):
            raise RemoteProtocolError(f"expected the content of {method.name} on channel "
                                      f"{method.channel}, got a frame of type {frame_type} "
                                      f"on channel {channel}")
        if frame_type == FRAME_HEADER:
            reader = _Reader(payload)
            class_id, _weight, size = _content_head.unpack(reader.take(_content_head.size))
            if class_id != BASIC_CLASS:
                raise RemoteProtocolError(f"content header of class {class_id}")
            method.properties = decode_properties(reader)
            if parts is not None and size > self._max_body(method):
                parts = None  # too large: counted, not kept
        else:
            received += len(payload)  # the body of a returned message is not kept
            if received > size:
                raise RemoteProtocolError(f"content body longer than its declared {size} bytes")
            if parts is not None:
                parts.append(payload)
        self._content = [method, size, received, parts]
        if received != size:
            return None
        self._content = None
        method.body_size = size
        if method.name == "Basic.Deliver":
            return self._delivered(method, parts)
        return self._on_return(method)

    def _max_body(self, method):
        channel = self.channels.get(method.channel)
        consumer = channel and channel.consumers.get(method.args["consumer_tag"])
        return math.inf if consumer is None or consumer[1] is None else consumer[1]

    def _delivered(self, method, parts):
        channel = self.channels.get(method.channel)
        if channel is None or channel.state == "closing" or (
                method.args["consumer_tag"] not in channel.consumers):
            return None  # the channel closed, or the consumer was cancelled, meanwhile
        body = None if parts is None else parts[0] if len(parts) == 1 else b"".join(parts)
        return Delivery(method.channel, method.args, method.properties, body, method.body_size)

    def _check_channel(self, method, states):
        channel = self.channels.get(method.channel)
        if method.channel == 0 or channel is None or channel.state not in states:
            raise RemoteProtocolError(f"{method.name} on channel {method.channel}, which is "
                                      f"{'not open' if channel is None else channel.state}")
        return channel

    def _expect(self, method, *states):
        if self.state not in states or method.channel != 0:
            raise RemoteProtocolError(f"unexpected {method.name} on channel {method.channel} "
                                      f"while the connection is {self.state}")

    def _handle_method(self, method):
        name, args = method.name, method.args
        if self.state == "closing" and name not in ("Connection.Close", "Connection.Close-Ok"):
            return None  # after our Connection.Close, everything else is dropped
        if name.startswith("Connection."):
            return self._on_connection_method(method)
        channel = self._check_channel(method, ("opening", "open", "closing"))
        if channel.state == "closing" and name not in ("Channel.Close", "Channel.Close-Ok"):
            return None  # after our Channel.Close, the rest of the channel's traffic is dropped
        if name == "Channel.Close":  # the broker's: the channel is gone once we answer
            self._send(method.channel, "Channel.Close-Ok")
            if channel.state != "closing":  # else our own Close crossed it: its Close-Ok comes
                del self.channels[method.channel]
        elif name in ("Basic.Ack", "Basic.Nack"):
            self._on_confirm(method, channel)
            return None  # the events are queued, one per message
        elif name == "Channel.Flow":
            self._send(method.channel, "Channel.Flow-Ok", active=args["active"])
        elif name == "Basic.Cancel":  # the broker's: the queue was deleted, or a node failed
            if channel.consumers.pop(args["consumer_tag"], None) is None:
                return None  # crossed our own Cancel: its Cancel-Ok follows
            if not args["nowait"]:
                self._send(method.channel, "Basic.Cancel-Ok", consumer_tag=args["consumer_tag"])
        elif name == channel.expecting:  # Open-Ok, Close-Ok, Declare-Ok, Select-Ok, ...
            channel.expecting = None
            if name == "Channel.Open-Ok":
                channel.state = "open"
            elif name == "Channel.Close-Ok":
                del self.channels[method.channel]
            elif name == "Basic.Consume-Ok":
                channel.consumers[args["consumer_tag"]], channel.consuming = \
                    channel.consuming, None
            elif name == "Basic.Cancel-Ok":
                channel.consumers.pop(args["consumer_tag"], None)
        else:
            raise RemoteProtocolError(f"unexpected {name} on channel {method.channel}: "
                                      f"{'nothing' if channel.expecting is None else channel.expecting}"
                                      " was awaited")
        return method

    def _on_connection_method(self, method):
        name = method.name
        if name == "Connection.Start":
            self._expect(method, "start")
            self._on_start(method.args)
            return None
        if name == "Connection.Secure":
            self._expect(method, "tune")
            raise RemoteProtocolError("the broker asked for a Connection.Secure challenge, "
                                      f"which the {self.mechanism} login does not use")
        if name == "Connection.Tune":
            self._expect(method, "tune")
            self._on_tune(method.args)
            return None
        if name == "Connection.Open-Ok":
            self._expect(method, "opening")
            self.state = "open"
        elif name == "Connection.Close":
            self._expect(method, "tune", "opening", "open", "closing")
            self._send(0, "Connection.Close-Ok")
            self.state = "closed"
        elif name == "Connection.Close-Ok":
            self._expect(method, "closing")
            self.state = "closed"
        else:  # Blocked, Unblocked
            self._expect(method, "open")
            self.blocked = method.args.get("reason")  # Unblocked has none
        return method

    def _on_confirm(self, method, channel):
        tag, multiple = method.args["delivery_tag"], method.args["multiple"]
        if not channel.confirming or tag >= channel.next_tag or (
                not multiple and tag not in channel.unconfirmed):
            raise RemoteProtocolError(f"{method.name} for delivery tag {tag} on channel "
                                      f"{method.channel}, which awaits no such confirm")
        last = channel.next_tag if multiple and tag == 0 else tag  # 0 and multiple: all of them
        tags = list(itertools.takewhile(lambda t: t <= last, channel.unconfirmed)) if multiple \
            else [tag]
        for confirmed in tags:
            message_id = channel.unconfirmed.pop(confirmed)
            returned = channel.returned.pop(message_id, None)
            if method.name == "Basic.Nack":
                self._events.append(Nacked(method.channel, message_id, confirmed))
            elif returned is not None:
                returned.delivery_tag = confirmed
                self._events.append(returned)
            else:
                self._events.append(Acked(method.channel, message_id, confirmed))

    def _on_return(self, method):
        channel = self.channels.get(method.channel)
        if channel is None or channel.state == "closing":
            return None  # the channel closed while the content came
        returned = Returned(method.channel, method.properties.get("message_id"), method.args)
        if not channel.confirming:
            return returned
        if returned.message_id not in channel.unconfirmed.values():
            raise RemoteProtocolError(f"Basic.Return of message {returned.message_id!r}, which "
                                      "awaits no confirm")
        channel.returned[returned.message_id] = returned  # the Ack that follows settles it
        return None

    def _on_start(self, args):
        if (args["version_major"], args["version_minor"]) != (0, 9):
            raise RemoteProtocolError(f"the broker speaks AMQP {args['version_major']}-"
                                      f"{args['version_minor']}, not 0-9-1")
        self.server_properties = args["server_properties"]
        offered = str(args["mechanisms"], "utf-8", "replace").split()  # "AMQPLAIN PLAIN"
        mechanism = next((m for m in self.mechanisms if m in offered), None)
        if mechanism is None:
            raise RemoteProtocolError(f"the broker does not offer the {' or '.join(self.mechanisms)}"
                                      f" login (it offers: {' '.join(offered) or 'nothing'})")
        self.mechanism = mechanism
        response = b""  # EXTERNAL: the TLS client certificate is the login
        if mechanism == "PLAIN":
            response = b"\x00%s\x00%s" % (self.username.encode(), self._password.encode())
        self._send(0, "Connection.Start-Ok", client_properties=self.client_properties,
                   mechanism=mechanism, response=response, locale=self.locale)
        self.state = "tune"

    def _on_tune(self, args):
        # Take the broker's limits; 0 means it sets none. Never ask for more.
        self.channel_max = min(self.channel_max, args["channel_max"] or self.channel_max)
        self.frame_max = min(self.frame_max, args["frame_max"] or self.frame_max)
        if self.frame_max < FRAME_MIN_SIZE:
            raise RemoteProtocolError(f"the broker's frame_max of {args['frame_max']} is below "
                                      f"the minimum of {FRAME_MIN_SIZE}")
        self._decoder.frame_max = self.frame_max
        self._send(0, "Connection.Tune-Ok", channel_max=self.channel_max,
                   frame_max=self.frame_max, heartbeat=self.heartbeat)
        self._send(0, "Connection.Open", virtual_host=self.vhost)
        self.state = "opening"

    # -- what the client does -------------------------------------------------

    def _require_open(self, what, channel=None):
        """The _Channel of `channel` if given, once the connection (and it) are open."""
        if self.state != "open":
            self._refuse_if_broken(what)
            raise LocalProtocolError(f"cannot {what}: the connection is {self.state}")
        if channel is None:
            return None
        state = self.channels.get(channel)
        if state is None or state.state != "open":
            raise LocalProtocolError(f"cannot {what}: channel {channel} is not open")
        return state

    def open_channel(self, channel):
        """Send Channel.Open; Channel.Open-Ok opens it (channel_is_open)."""
        self._require_open("open a channel")
        if not 0 < channel <= self.channel_max or channel in self.channels:
            raise LocalProtocolError(f"channel {channel} is in use or out of range")
        self.channels[channel] = _Channel()
        self._send(channel, "Channel.Open")

    def close_channel(self, channel, reply_code=200, reply_text="bye"):
        """Send Channel.Close; the broker's Channel.Close-Ok frees the channel number.
        Confirms still awaited on it will not come."""
        state = self._require_open("close a channel", channel)
        state.state, state.expecting = "closing", "Channel.Close-Ok"
        self._send(channel, "Channel.Close", reply_code=reply_code, reply_text=reply_text)

    def send_method(self, channel, name, **values):
        """Send a method on an open channel, e.g. Queue.Declare or Confirm.Select; its
        reply (Queue.Declare-Ok ...) comes as a Method event."""
        state = self._require_open(f"send {name}", channel)
        reply = None if values.get("nowait") else _REPLIES.get(name)
        if reply is not None and state.expecting is not None:
            raise LocalProtocolError(f"cannot send {name} on channel {channel}: it still "
                                     f"awaits {state.expecting}")
        if name == "Confirm.Select":
            state.confirming = True
        state.expecting = reply
        self._send(channel, name, **values)

    def consume(self, channel, queue, consumer_tag="", *, no_ack=False, exclusive=False,
                arguments=None, max_body_size=None):
        """Send Basic.Consume; deliveries come as Delivery events once Basic.Consume-Ok
        (a Method event naming the consumer tag, the broker's if `consumer_tag` is "")
        has come. A body larger than `max_body_size` bytes is counted, not kept."""
        state = self._require_open("consume", channel)
        self.send_method(channel, "Basic.Consume", queue=queue, consumer_tag=consumer_tag,
                         no_ack=no_ack, exclusive=exclusive, arguments=arguments)
        state.consuming = (no_ack, max_body_size)

    def cancel(self, channel, consumer_tag):
        """Send Basic.Cancel; deliveries may still come until its Basic.Cancel-Ok."""
        state = self._require_open("cancel a consumer", channel)
        if consumer_tag not in state.consumers:
            raise LocalProtocolError(f"cannot cancel consumer {consumer_tag!r}: channel "
                                     f"{channel} has no such consumer")
        self.send_method(channel, "Basic.Cancel", consumer_tag=consumer_tag)

    def ack(self, channel, delivery_tag, multiple=False):
        """Acknowledge a delivery, or with `multiple` every one up to it (0: all)."""
        state = self._require_open("acknowledge a delivery", channel)
        unacked = state.unacked
        if not (multiple and delivery_tag == 0) and delivery_tag not in unacked:
            raise LocalProtocolError(f"cannot acknowledge delivery tag {delivery_tag} on "
                                     f"channel {channel}: it awaits no acknowledgement")
        if multiple:
            last = delivery_tag or state.last_delivery
            state.unacked = {tag for tag in unacked if tag > last} if len(unacked) > 1 else set()
        else:
            unacked.discard(delivery_tag)
        self._outbox.append(encode_frame(FRAME_METHOD, channel, _ACK_HEAD + _longlong.pack(
            delivery_tag) + (b"\x01" if multiple else b"\x00")))

    def publish(self, channel, exchange, routing_key, body, properties, mandatory=False,
                message_id=None):
        """Queue a message; its delivery tag in confirm mode, else None.

        `properties` are encoded property bytes (see encode_properties), so a
        publisher can encode the ones that never change once. In confirm mode
        the broker's answer comes as an Acked, Nacked or Returned event naming
        `message_id`.
        """
        state = self._require_open("publish", channel)
        key = (channel, exchange, routing_key, mandatory)
        method = self._publish_frames.get(key)
        if method is None:  # the same few destinations over and over: encode each once
            if len(self._publish_frames) > 64:
                self._publish_frames.clear()
            method = self._publish_frames[key] = encode_frame(FRAME_METHOD, channel, encode_method(
                "Basic.Publish", exchange=exchange, routing_key=routing_key, mandatory=mandatory))
        self._outbox += method, encode_content(channel, properties, body, self.frame_max)
        if not state.confirming:
            return None
        tag, state.next_tag = state.next_tag, state.next_tag + 1
        state.unconfirmed[tag] = message_id
        return tag

    def close(self, reply_code=200, reply_text="bye"):
        """Start closing the connection; Connection.Close-Ok ends it."""
        self._refuse_if_broken("close the connection")
        if self.state in ("opening", "open"):
            self._send(0, "Connection.Close", reply_code=reply_code, reply_text=reply_text)
            self.state = "closing"
        elif self.state != "closing":
            self.state = "closed"


# ---------------------------------------------------------------------------
# transport: the AMQP client's only code that touches sockets, TLS and poll()
# ---------------------------------------------------------------------------

def _is_host_name(name):
    """Can `name` go out as a TLS server name (IDNA, no NUL)?"""
    try:
        return bool(name) and "\x00" not in name and bool(name.encode("idna"))
    except UnicodeError:
        return False


class AMQPParameters:
    """Where and how to connect, parsed from an amqp:// or amqps:// URL."""

    NUMBER_KEYS = {"heartbeat": (0, 65535), "connection_timeout": (1e-3, 1e6),
                   "frame_max": (8192, 2 ** 31), "channel_max": (1, 65535)}
    TLS_KEYS = ("cacertfile", "certfile", "keyfile", "keyfile_password", "verify",
                "server_name_indication")

    def __init__(self, url):
        from urllib.parse import parse_qsl, unquote, urlsplit  # here: slow to import

        if not isinstance(url, str):
            raise TypeError(f"amqp_url must be a string, got {type(url).__name__}")
        try:
            parts = urlsplit(url.strip())
        except ValueError:  # its message quotes the user name, password and host
            parts = None
        if parts is None:  # raised here, not in the except: no __context__ to quote them either
            raise ValueError("amqp_url is not a valid URL (not shown: it may hold a password); "
                             "percent-encode the user name and password, and write an IPv6 "
                             "address in brackets")
        if "@" in parts.path + parts.query + parts.fragment:
            raise ValueError("amqp_url has an @ after the host: percent-encode '/', '?', '#' "
                             "and '@' in the user name and password (%2F, %3F, %23, %40)")
        if parts.scheme not in ("amqp", "amqps"):
            raise ValueError(f"amqp_url must start with amqp:// or amqps://, got "
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
            raise ValueError(f"amqp_url has a bad port: {shown!r}")
        self.port = port or (5671 if self.tls else 5672)
        self.username = unquote(parts.username) if parts.username else "guest"
        self.password_given = parts.password is not None
        self.password = unquote(parts.password) if self.password_given else "guest"
        self.vhost = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path) or "/"
        self.heartbeat = self.connection_timeout = self.frame_max = self.channel_max = None
        self.cacertfile = self.certfile = self.keyfile = self.server_name_indication = None
        self.keyfile_password = None  # for an encrypted keyfile; never asked for on a terminal
        self.verify = "verify_peer"
        self._ssl_context = None
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key in self.TLS_KEYS:
                if not self.tls:
                    raise ValueError(f"amqp_url query key {key} needs an amqps:// URL")
                if key == "verify" and value not in ("verify_peer", "verify_none"):
                    raise ValueError(f"amqp_url query key verify must be verify_peer or "
                                     f"verify_none, got {value!r}")
                setattr(self, key, value)
                continue
            if key not in self.NUMBER_KEYS:
                raise ValueError(f"amqp_url has an unknown query key {key!r}; known keys: "
                                 f"{', '.join((*self.NUMBER_KEYS, *self.TLS_KEYS))}")
            try:
                number = float(value) if key == "connection_timeout" else int(value)
            except ValueError:
                raise ValueError(f"amqp_url query key {key} must be a number, got {value!r}") \
                    from None
            low, high = self.NUMBER_KEYS[key]
            if not low <= number <= high:
                raise ValueError(f"amqp_url query key {key} must be between {low} and {high}, "
                                 f"got {value}")
            setattr(self, key, number)
        if self.keyfile and not self.certfile:
            raise ValueError("amqp_url has a keyfile but no certfile")
        if self.server_name_indication is not None and not _is_host_name(
                self.server_name_indication):
            raise ValueError(f"amqp_url query key server_name_indication must be a host name, "
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
        self._blocked_logged = None  # when the last line about them was

    @property
    def is_open(self):
        return self.sock is not None and self.protocol.is_open

    @property
    def blocked(self):
        """Why the broker blocks publishing (a resource alarm), or None."""
        return self.protocol.blocked

    def channel_is_open(self, channel):
        return self.sock is not None and self.protocol.channel_is_open(channel)

    @property
    def mechanism(self):
        """The SASL mechanism it logged in with (PLAIN or EXTERNAL), once it has."""
        return self.protocol.mechanism

    def _time_left(self, deadline, doing):
        left = deadline - self.clock()
        if left <= 0:
            raise TimeoutError(f"timed out {doing}")
        return left

    # -- opening and closing --------------------------------------------------

    def connect(self, deadline):
        """Open the socket, then the AMQP connection, within the deadline."""
        import socket  # only connections need it, and it is slow to import

        host, port = self.parameters.host, self.parameters.port
        where = f"{host}:{port}"
        try:
            sock = self.socket_factory((host, port),
                                       self._time_left(deadline, f"connecting to {where}"))
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
                sock = (self.ssl_context or self.parameters.ssl_context()).wrap_socket(
                    sock, server_hostname=self.parameters.server_name_indication or host)
            sock.setblocking(False)  # every wait is a poll() with a deadline
            self.sock = sock
            self.wait_for(lambda: self.protocol.is_open, deadline,
                          f"for the broker at {where} to open the connection")
        except BaseException:
            self.abort()
            raise

    def abort(self):
        """Drop the socket without the closing handshake."""
        if self._blocked_changes:  # the line owed about Blocked comes now, not never
            self._log_blocked(at_once=True)
        sock, self.sock = self.sock, None
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
        data = self.protocol.data_to_send(self.clock())
        if not data:
            return
        data = memoryview(data)
        try:
            while data:
                try:
                    data = data[self.sock.send(data):]
                except self._would_block:
                    pass
                # the socket's buffer is full: a blocked broker stops reading
                if data and not self._wait(True, self._time_left(
                        deadline, "sending to the broker")):
                    raise TimeoutError("timed out sending to the broker "
                                       "(it stopped reading: blocked, or overloaded?)")
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
        if self._receive(0.0):
            while self._buffered():  # TLS may hold more decrypted bytes than one recv() took
                self._receive(0.0)
            self._handle_events()
        heartbeat_in = self._send_queued(send_deadline)
        log_in = self._log_blocked() if self._blocked_changes else None
        if log_in is not None and (heartbeat_in is None or log_in < heartbeat_in):
            return log_in
        return heartbeat_in

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
        self.protocol.receive_data(data, self.clock())
        return True

    def _wait(self, writing, timeout):
        """Wait until the socket can be read (or written); False when the time ran out.
        Interrupted when `interrupt` is signalled first."""
        interrupt = self.interrupt
        if interrupt is None or timeout <= 0:  # a look without waiting needs no interrupting
            return _wait_io([self.sock], writing, timeout)
        ready = _wait_io([self.sock], writing, timeout, also_readable=interrupt.sock)
        if interrupt.take_one():
            raise Interrupted("stopped while waiting for the broker")
        return ready

    def _buffered(self):
        """Does TLS hold bytes it already decrypted (which poll() cannot see)?"""
        pending = getattr(self.sock, "pending", None)
        return bool(pending and pending())

    def _handle_events(self):
        while True:
            event = self.protocol.next_event()
            if event is None:
                if self._blocked_changes:
                    self._log_blocked()
                return
            if isinstance(event, ConnectionLost):
                self.abort()
                raise ConnectionResetError("the broker closed the connection")
            if isinstance(event, Delivery):
                self._deliveries.append(event)
                continue
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
        if self.blocked is not None:
            raise PublishError(f"the broker blocks publishers ({self.blocked})")
        self._outcomes.clear()
        for index, message in enumerate(messages):
            tag = self.protocol.publish(channel, message.exchange, message.routing_key,
                                        message.body, message.properties, mandatory,
                                        message.message_id)
            if tag is not None:
                self._awaited.add(message.message_id)
            if index % 64 == 63:  # keep what is queued in memory small
                self.send_pending(deadline)
        try:
            self.send_pending(deadline)
            if self._awaited:
                self.wait_for(lambda: not self._awaited, deadline, "for the broker to confirm")
        except TimeoutError:
            if self.blocked is None:
                raise  # a broker that does not answer: the caller drops the connection
            # Blocked after we published: the connection stays, and will resume.
            raise PublishError(f"the broker blocks publishers ({self.blocked}); "
                               "not confirmed yet") from None
        finally:
            self._awaited.clear()  # what comes later for these messages is dropped
        return {message.message_id: self._outcomes.pop(message.message_id, (True, None))
                for message in messages}


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
                    clock=time.monotonic, interrupt=None):
    """An open BlockingConnection to the first of `endpoints` (AMQPParameters of the
    nodes of one cluster, tried in order) that answers before the deadline.

    Each endpoint gets a fair share of the time left, and at most its URL's
    connection_timeout (else `timeout`): a dead node cannot use it all. The
    heartbeat is `heartbeat` if given, else the URL's, else 60 s. Over TLS with
    a client certificate and no password, the login is SASL EXTERNAL when the
    broker offers it. `interrupt`: see BlockingConnection. Raises what the last
    endpoint failed with.
    """
    for left, parameters in zip(range(len(endpoints), 0, -1), endpoints):
        protocol = AMQPProtocol(
            parameters.username, parameters.password, parameters.vhost,
            heartbeat=heartbeat if heartbeat is not None else
            parameters.heartbeat if parameters.heartbeat is not None else 60,
            frame_max=parameters.frame_max or DEFAULT_FRAME_MAX,
            channel_max=parameters.channel_max or DEFAULT_CHANNEL_MAX,
            client_properties=_client_properties(connection_name),
            mechanisms=("EXTERNAL", "PLAIN") if parameters.tls and not
            parameters.password_given and (parameters.certfile or ssl_context) else ("PLAIN",))
        connection = BlockingConnection(parameters, protocol, socket_factory=socket_factory,
                                        ssl_context=ssl_context, clock=clock, interrupt=interrupt)
        share = (deadline - clock()) / left
        try:
            connection.connect(clock() + min(share, parameters.connection_timeout or timeout))
        except (PihaceError, OSError) as exc:
            if left == 1 or isinstance(exc, Interrupted):
                raise
            log.info("cannot use %s (%s); trying %s", parameters.safe_url,
                     describe_error(exc, parameters.safe_url), endpoints[-left + 1].safe_url)
            continue
        log.info("connected to %s", parameters.safe_url)
        if connection.mechanism == "EXTERNAL" and parameters.username != "guest":
            log.warning("the user name %r of %s is not used: with SASL EXTERNAL the broker "
                        "logs in as its TLS client certificate says", parameters.username,
                        parameters.safe_url)
        return connection


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

    def failed(self):
        """Count a failure; the seconds to wait before the next attempt."""
        self.failures += 1
        if self.failures == 1:
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
        self.url, self.safe_url = url, self.parameters.safe_url
        self.timeout = _seconds("timeout", timeout)

    def __call__(self):
        try:
            connection = open_connection([self.parameters], time.monotonic() + self.timeout,
                                         timeout=self.timeout, connection_name="pihace check")
        except (PihaceError, OSError) as exc:
            return False, describe_error(exc, self.safe_url)
        connection.close(time.monotonic() + min(self.timeout, 5.0))
        return True, f"connected to {self.safe_url}"


# ---------------------------------------------------------------------------
# pusher
# ---------------------------------------------------------------------------

_BUSY = "timed out waiting for another thread's publish to finish"
_HOST = os.uname().nodename if hasattr(os, "uname") else os.environ.get("COMPUTERNAME", "")
_DROPPED = "dropped from a full outbox"
_PENDING = "not confirmed yet"  # the outcome of a report still in the outbox


class _Spool:
    """The outbox on disk: one file per report in folder `path`, written before the
    report's first attempt and removed once it is confirmed, so that reports
    survive a crash, a SIGKILL or a power loss.

    A file is written whole under a temporary name, flushed to disk (fsync) and
    renamed: a report is either all there or not at all. A temporary file left by
    a crash, or a file that fails its checksum, is ignored (never a crash). Names
    are <sequence>-<message id>.report, so the oldest comes first; a lock file
    keeps a second process from using the same folder at the same time.
    """

    MAGIC = b"pihace-report\x001\n"
    FIELDS = _Message._fields  # each stored as a 4-byte length and its bytes

    def __init__(self, path):
        self.path = os.fspath(path)
        os.makedirs(self.path, exist_ok=True)
        self._lock_file = self._lock_folder()
        self._names = {}  # message id -> its file's name
        self._sequence = itertools.count(1)

    def _lock_folder(self):
        lock_file = open(os.path.join(self.path, "lock"), "a+b")
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

    def load(self):
        """The reports left by an earlier run, oldest first."""
        found = []
        for name in os.listdir(self.path):
            path = os.path.join(self.path, name)
            if name.endswith(".tmp"):  # a write cut short: the report never counted as kept
                self._remove(path)
            elif name.endswith(".report"):
                sequence = name.partition("-")[0]
                if sequence.isdigit():
                    found.append((int(sequence), name))
        messages = []
        for sequence, name in sorted(found):
            try:
                with open(os.path.join(self.path, name), "rb") as file:
                    message = self._decode(file.read())
            except (OSError, ValueError) as exc:
                log.warning("ignored the spooled report %s: %s", name, _printable(str(exc)))
                try:  # kept for a person to look at, out of the way
                    os.replace(os.path.join(self.path, name),
                               os.path.join(self.path, name + ".unreadable"))
                except OSError:
                    pass
                continue
            self._names[message.message_id] = name
            messages.append(message)
        self._sequence = itertools.count(max((sequence for sequence, _ in found), default=0) + 1)
        return messages

    def write(self, message):
        if self._lock_file.closed:  # the pusher was closed, and is used again
            self._lock_file = self._lock_folder()
        name = f"{next(self._sequence):012d}-{message.message_id}.report"
        path = os.path.join(self.path, name)
        with open(path + ".tmp", "wb") as file:
            file.write(self._encode(message))
            file.flush()
            os.fsync(file.fileno())
        os.replace(path + ".tmp", path)
        self._sync_folder()  # the rename itself survives a power loss
        self._names[message.message_id] = name

    def remove(self, message):
        name = self._names.pop(message.message_id, None)
        if name is not None:
            self._remove(os.path.join(self.path, name))

    @staticmethod
    def _remove(path):
        try:
            os.remove(path)
        except FileNotFoundError:
            pass

    def _sync_folder(self):
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
        self._spool = None if path is None else _Spool(path)
        if self._spool is not None:
            for message in self._spool.load():
                self._append(message)
            if self._messages:
                log.info("%d report(s) from an earlier run wait in %s", len(self._messages),
                         self._spool.path)

    def __len__(self):
        return len(self._messages)

    def __iter__(self):
        with self._lock:
            return iter(list(self._messages))

    def add(self, message, waited_for=False):
        """Append `message` (on disk first, with a path); `waited_for`: outcome() will
        be asked for it."""
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

    def outcome(self, message_id):
        """What became of a message added with `waited_for` (asked once): None when
        confirmed, a reason when dropped or unroutable, _PENDING while it waits."""
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


class AMQPPusher:
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
    cluster), tried in a random order; with `max_connection_age`, a connection
    older than that is replaced at the next report, which spreads a fleet again
    over the nodes after one came back.
    """

    _channel = 1  # the one channel it publishes on
    interval = None  # seconds between reports while push_forever_in_loop runs

    def __init__(self, healthcheck=None, amqp_url="amqp://guest:guest@localhost:5672/",
                 queue_name="pihace.healthcheck", *, exchange="", exchange_type=None,
                 routing_key=None, declare=True, queue_arguments=None, confirm=True,
                 heartbeat=None, timeout=10.0, connect_timeout=None, buffer_size=1000,
                 outbox_path=None, max_connection_age=None, connection_name=None,
                 ssl_context=None, socket_factory=None, clock=time.monotonic):
        if healthcheck is not None and not callable(getattr(healthcheck, "check", None)):
            raise TypeError("healthcheck must be a HealthCheck (or have a check() method), got "
                            f"{type(healthcheck).__name__}")
        urls = [amqp_url] if isinstance(amqp_url, str) else list(amqp_url or ())
        if not urls:
            raise ValueError("amqp_url must be a URL or a non-empty list of URLs")
        self.endpoints = [AMQPParameters(url) for url in urls]
        masked = [_MaskedURL(url, endpoint.safe_url) for url, endpoint in zip(urls, self.endpoints)]
        self.amqp_url = masked[0] if isinstance(amqp_url, str) else masked  # pihace 1.0.0's name
        self.parameters = self.endpoints[0]  # the endpoint in use, or tried last
        self.exchange = exchange or ""
        self.routing_key = queue_name if routing_key is None else routing_key
        for what, value in (("queue_name", queue_name), ("exchange", self.exchange),
                            ("routing_key", self.routing_key),
                            ("exchange_type", exchange_type or "")):
            if not isinstance(value, str):
                raise TypeError(f"{what} must be a string, got {type(value).__name__}")
            if len(value.encode("utf-8")) > 255:
                raise ValueError(f"{what} is {len(value.encode('utf-8'))} bytes long; "
                                 "AMQP allows at most 255")
        encode_table(queue_arguments)  # a ValueError now rather than at the first push
        if heartbeat is not None:
            _number("heartbeat", heartbeat, lambda v: 0 <= v <= 65535,
                    "whole seconds from 0 (off) to 65535", int)
        _number("buffer_size", buffer_size, lambda v: v >= 1, "an integer >= 1", int)
        name, version = (getattr(healthcheck, key, None)
                         for key in ("component_name", "component_version"))
        self.healthcheck, self.queue_name, self.exchange_type = healthcheck, queue_name, exchange_type
        self.declare, self.queue_arguments = declare, dict(queue_arguments or {})
        self.confirm = confirm
        self.heartbeat = heartbeat  # None: each URL's ?heartbeat=, else 60 s
        self.timeout = _seconds("timeout", timeout)
        # opening a connection (TCP, TLS, AMQP, channel, declare) has its own bound, so that
        # a slow link whose set-up takes longer than one publish may still deliver
        self.connect_timeout = (2 * self.timeout if connect_timeout is None
                                else _seconds("connect_timeout", connect_timeout))
        self.max_connection_age = (None if max_connection_age is None else
                                   _seconds("max_connection_age", max_connection_age))
        self.buffer_size = buffer_size
        self.outbox = Outbox(buffer_size, outbox_path)
        self.connection_name = connection_name if connection_name is not None else (
            " ".join(str(part) for part in (name, version) if part) or "pihace")
        self.ssl_context, self.socket_factory, self.clock = ssl_context, socket_factory, clock
        self.connections_opened = 0
        self._connection, self._declared, self._connected_at = None, False, 0.0
        self._rebalancing = False  # replacing a connection older than max_connection_age
        self._lock = threading.RLock()  # held while the connection is in use
        self._stop_requested = False  # by stop(); kept until the loop ends
        self._wakeup = None  # while push_forever_in_loop runs: how stop() wakes it
        self._stopping = None  # and how stop() interrupts its waits for the broker
        self._new_message_ids()
        _reset_after_fork.add(self)
        self._properties = PropertiesTemplate(
            {"content_type": "application/json", "content_encoding": "utf-8",
             "delivery_mode": 2, "type": "pihace.health", "app_id": name and str(name)},
            varying=("headers", "message_id", "timestamp"))

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
        self._wakeup = self._stopping = None  # the parent's loop is not running here

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # -- the connection -------------------------------------------------------

    def _connect(self, deadline):
        """Connect to a node that answers: in a random order, the one lost last tried last
        (none on the first connection, nor to rebalance)."""
        order = failover_order(self.endpoints, self._last_node)
        try:
            connection = open_connection(
                order, deadline, timeout=self.connect_timeout, heartbeat=self.heartbeat,
                connection_name=self.connection_name, ssl_context=self.ssl_context,
                socket_factory=self.socket_factory, clock=self.clock, interrupt=self._stopping)
        except (PihaceError, OSError):
            self.parameters = order[-1]  # what the error is about
            raise
        self.parameters = connection.parameters
        self.connections_opened += 1
        self._connection, self._declared = connection, False
        self._connected_at = self.clock()
        self._wake_loop()  # a loop sleeping without a connection must keep this one alive
        return connection

    @property
    def _last_node(self):
        """The node to try last: the one in use or tried last, unless it is time to
        spread (first connection, or an old one replaced to rebalance)."""
        if self.connections_opened == 0 or self._rebalancing:
            return None
        return self.parameters

    def _ready(self, deadline, setup_deadline):
        """An open connection and channel, with the destination declared, and the
        deadline of what follows: `deadline` on a connection that was ready, else the
        later `setup_deadline` (a slow link may take longer to set up than to publish)."""
        connection = self._connection
        if connection is not None and connection.is_open:
            try:
                connection.keep_alive(deadline)  # notice a Close, or a dead socket, first
            except (PihaceError, OSError) as exc:
                log.warning("connection lost, opening a new one: %s", self._handle_failure(exc))
                connection = self._connection  # still there after a channel was closed
        if connection is not None and self._too_old():
            log.info("replacing the connection to %s after %gs, to spread over the nodes",
                     self.parameters.safe_url, self.max_connection_age)
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
        self._rebalancing = False
        if not connection.channel_is_open(self._channel):
            connection.open_channel(self._channel, setup_deadline, self.confirm)
        if self.declare and not self._declared:
            if self.exchange and self.exchange_type:
                connection.call(self._channel, "Exchange.Declare", setup_deadline,
                                exchange=self.exchange, type=self.exchange_type, durable=True)
            if not self.exchange:
                connection.call(self._channel, "Queue.Declare", setup_deadline,
                                queue=self.queue_name, durable=True,
                                arguments=self.queue_arguments)
        self._declared = True
        return connection, setup_deadline

    def _too_old(self):
        return (self.max_connection_age is not None and len(self.endpoints) > 1
                and self.clock() - self._connected_at >= self.max_connection_age)

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

    # -- publishing -----------------------------------------------------------

    def _message(self, body, headers=None, message_id=None, timestamp=None, routing_key=None,
                 exchange=None, as_text=None):
        """Check and encode a message; ValueError for what can never be sent.
        `as_text` turns what JSON cannot hold into text instead (for reports)."""
        if isinstance(body, dict):
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
        for name in (routing_key, exchange):  # the pusher's own were checked by __init__
            if name is not None:
                encode_shortstr(name)  # a ValueError if too long
        message_id = message_id or next(self._message_ids)
        timestamp = int(time.time() if timestamp is None else timestamp)
        if not 0 <= timestamp < 2 ** 63:
            raise ValueError(f"timestamp must be seconds since 1970, got {timestamp}")
        return _Message(body, self._properties.encode(headers=headers, message_id=message_id,
                                                      timestamp=timestamp), message_id,
                        self.exchange if exchange is None else exchange,
                        self.routing_key if routing_key is None else routing_key)

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
                routing_key=None, exchange=None):
        """Send one message (bytes, or a dict as JSON) with the pusher's options.

        Returns True once confirmed (or sent, with confirm=False), else
        (False, reason). Unlike push(), nothing is kept for a later retry.
        """
        message = self._message(body, headers, message_id, timestamp, routing_key, exchange)
        deadline, setup_deadline = self._deadlines()
        # waiting for another thread's publish counts in the deadline
        if not self._lock.acquire(timeout=max(0.0, deadline - self.clock())):
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
        outcome = self.outbox.outcome(message.message_id)
        if outcome is _PENDING:  # still in the outbox: this flush says why
            outcome = reasons.get(message.message_id, _PENDING)
        return True if outcome is None else (False, outcome)

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
        if not self._lock.acquire(timeout=max(0.0, deadline - self.clock())):
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
        what the broker sends, so the connection is kept alive. After a failure
        or a lost connection, reports are still taken on schedule, into the
        outbox, while connection attempts back off (see Backoff; the first one
        within half an interval, at most 30 s apart). stop() ends the wait, or
        the wait for the broker, at once; a stop_event is looked at every
        second. On the way out the outbox gets a last chance of at most
        `timeout` and 5 s (a second stop() or Ctrl-C ends it at once), and the
        connection is closed cleanly.
        """
        interval = self.interval = _seconds("interval", interval)
        if self.healthcheck is None:
            raise ValueError("push_forever_in_loop() needs the pusher's healthcheck")
        backoff = Backoff(spread=interval / 2)
        next_report, retry_at, failed_rounds = self.clock(), math.inf, 0
        self._wakeup, self._stopping = Wakeup(), Wakeup()
        self._interruptible(True)
        log.info("pushing a report to %s every %gs", self.parameters.safe_url, interval)
        try:
            while not self._stopped(stop_event):
                now = self.clock()
                result = None
                if now >= next_report:
                    if retry_at < math.inf:  # backing off: the report waits for the retry
                        self._survive(self._take_report)
                    else:
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
                    retry_at = self.clock() + backoff.failed()
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
        self._stopping.clear()  # the stop() that ended the loop must not end this too
        try:
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
            wakeup, stopping, self._wakeup, self._stopping = self._wakeup, self._stopping, None, None
            wakeup.close()
            stopping.close()
            self._stop_requested = False  # ready for another run

    def _interruptible(self, on):
        """Let stop() end the connection's waits for the broker (only while the loop runs)."""
        with self._lock:
            if self._connection is not None:
                self._connection.interrupt = self._stopping if on else None

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
        self._stop_requested = True
        stopping = self._stopping
        if stopping is not None:
            stopping.wake()  # ends the wait for the broker in progress, if one is
        self._wake_loop()

    def _wake_loop(self):
        """Make the loop's wait, if one runs, look again at the stop flag and the connection."""
        wakeup = self._wakeup
        if wakeup is not None:
            wakeup.wake()

    def _stopped(self, stop_event):
        return self._stop_requested or (stop_event is not None and stop_event.is_set())

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


# ---------------------------------------------------------------------------
# watcher: consuming the fleet's reports, one state per device, hooks on changes
# ---------------------------------------------------------------------------

# The states of a device, worst first (the live table's order).
DEVICE_STATES = ("silent", "down", "late", "degraded", "new", "up")
_STATE_OF_STATUS = {"Available": "up", "Partially Available": "degraded", "Unavailable": "down"}
_NAME_LIMIT = 200  # characters of a device's name or host that are kept
_FAILING_LIMIT = 20  # names of failing checks kept per device


class Device:
    """What the watcher knows of one device (a component name on a host).

    `last_seen` is wall-clock time (seconds since 1970) of its newest report:
    the report's AMQP timestamp, never later than its arrival. `state` is one
    of DEVICE_STATES; `status` the newest report's.
    """

    __slots__ = ("name", "host", "state", "status", "last_seen", "interval", "late_after",
                 "reports", "rate", "failing", "due")

    def __init__(self, name, host):
        self.name, self.host = name, host
        self.state = self.status = self.rate = None
        self.last_seen = self.interval = self.late_after = 0.0
        self.reports, self.failing = 0, ()
        self.due = math.inf  # when its age next changes its state

    @property
    def id(self):
        return f"{self.name}@{self.host}" if self.host else self.name

    def snapshot(self, now):
        return {"device": self.id, "name": self.name, "host": self.host, "state": self.state,
                "status": self.status, "last_seen": self.last_seen,
                "age": max(0.0, now - self.last_seen), "interval": self.interval,
                "reports": self.reports, "rate": self.rate, "failing": list(self.failing)}


def _bounded_text(value, limit=_NAME_LIMIT):
    """A name from a report: text, at most `limit` characters (escaped only when shown)."""
    text = value if isinstance(value, str) else "" if value is None else _text(value)
    return text if len(text) <= limit else text[:limit] + "..."


_ACK_PAUSE = 0.02  # seconds without a delivery after which the applied ones are acknowledged


class Watcher:
    """Consumes the fleet's health reports and keeps one state per device.

    A device is a component name on a host (a report without a name falls
    back to the AMQP app_id, then user_id). Its state is `new` on its first
    report, then `up`, `degraded` or `down` as its newest report's status
    says; `late` when no report came for interval + grace seconds, `silent`
    after interval + silent_grace (or silent_limit, if sooner). The interval
    is the report's own `interval` key (pushers in a loop send it), else
    `default_interval`. Each change calls every on_change(device, old_state,
    new_state, report) once (device: a dict; report: None for late and silent).

    Delivery is at-least-once: a report is acknowledged only after it has been
    applied; one whose message_id was seen already is counted as a duplicate
    and not applied again. A report that is not JSON, not a pihace report, or
    larger than max_report_size bytes is counted, logged (once per producer)
    and acknowledged, so it cannot come back. After any loss the watcher
    reconnects with exponential backoff and jitter, trying each URL in turn.
    """

    _channel = 1

    def __init__(self, amqp_url="amqp://guest:guest@localhost:5672/",
                 queue_name="pihace.healthcheck", *, exchange="", exchange_type=None,
                 binding_key="#", declare=True, queue_arguments=None, prefetch=100,
                 default_interval=60.0, grace=None, silent_grace=None, silent_limit=None,
                 on_change=None, tick=1.0, max_report_size=1 << 20, dedup_window=100000,
                 heartbeat=None, timeout=10.0, connection_name="pihace watch",
                 ssl_context=None, socket_factory=None, clock=time.time):
        urls = [amqp_url] if isinstance(amqp_url, str) else list(amqp_url or ())
        if not urls:
            raise ValueError("amqp_url must be a URL or a non-empty list of URLs")
        self.endpoints = [AMQPParameters(url) for url in urls]
        self.parameters = self.endpoints[0]
        for what, value in (("queue_name", queue_name), ("exchange", exchange or ""),
                            ("binding_key", binding_key), ("exchange_type", exchange_type or "")):
            if not isinstance(value, str):
                raise TypeError(f"{what} must be a string, got {type(value).__name__}")
            encode_shortstr(value)  # a ValueError when over 255 bytes
        if not queue_name and not exchange:
            raise ValueError("queue_name may be empty (a queue of the watcher's own) only with "
                             "an exchange to bind it to")
        encode_table(queue_arguments)
        _number("prefetch", prefetch, lambda v: 0 <= v <= 65535, "an integer from 0 to 65535",
                int)
        _number("max_report_size", max_report_size, lambda v: v >= 1, "an integer >= 1", int)
        _number("dedup_window", dedup_window, lambda v: v >= 0, "an integer >= 0", int)
        self.default_interval = _seconds("default_interval", default_interval)
        self.grace = None if grace is None else _seconds("grace", grace)
        self.silent_grace = None if silent_grace is None else _seconds("silent_grace",
                                                                       silent_grace)
        self.silent_limit = None if silent_limit is None else _seconds("silent_limit",
                                                                       silent_limit)
        self.tick = _seconds("tick", tick)
        self.timeout = _seconds("timeout", timeout)
        if heartbeat is not None:
            _number("heartbeat", heartbeat, lambda v: 0 <= v <= 65535,
                    "whole seconds from 0 (off) to 65535", int)
        callbacks = on_change if isinstance(on_change, (list, tuple)) else [on_change]
        if not all(callable(callback) for callback in callbacks if callback is not None):
            raise TypeError("on_change must be a callable or a list of callables")
        self.on_change = [callback for callback in callbacks if callback is not None]
        self.queue_name, self.exchange, self.exchange_type = queue_name, exchange or "", exchange_type
        self.binding_key, self.declare = binding_key, declare
        self.queue_arguments = dict(queue_arguments or {})
        self.prefetch, self.max_report_size = prefetch, max_report_size
        self._ack_every = max(1, prefetch // 2) if prefetch else 50
        self.heartbeat, self.connection_name = heartbeat, connection_name
        self.ssl_context, self.socket_factory, self.clock = ssl_context, socket_factory, clock
        self.counts = collections.Counter()  # applied, duplicate, invalid, stale
        self.connections_opened = 0
        self.last_error = None  # why it could not read, the last time it could not
        self._devices = {}  # (name, host) -> Device
        self._lock = threading.Lock()  # the devices, for snapshots from other threads
        self._seen, self._seen_order = set(), collections.deque()
        self._dedup_window = dedup_window
        self._garbage_from = set()  # producers whose bad reports were logged already
        import json.scanner  # here, not at the top: slow to import (see the imports)

        # scan(text, index) -> (value, end): what JSONDecoder.raw_decode calls, minus a frame
        self._json_loads, self._scan_json = json.loads, json.scanner.make_scanner(
            json.JSONDecoder())
        self._connection = self._last_node = None
        self._unacked, self._last_tag = 0, None  # applied, not acknowledged yet (acks batch)
        self._stop_requested = False
        self._wakeup = None  # while run() runs: how stop() wakes it, wherever it waits
        self._next_tick = -math.inf

    def __repr__(self):
        return f"<Watcher {self.parameters.safe_url} queue={self.queue_name!r}>"

    # -- what it knows ----------------------------------------------------------

    @property
    def devices(self):
        """A snapshot: {device id: dict of name, host, state, status, last_seen, age,
        interval, reports, rate, failing}."""
        now = self.clock()
        with self._lock:
            return {device.id: device.snapshot(now) for device in self._devices.values()}

    def _limits(self, interval):
        """(late, silent): the seconds without a report after which a device is each."""
        grace = self.grace if self.grace is not None else max(0.5 * interval, 2.0)
        silent = interval + (self.silent_grace if self.silent_grace is not None else 4 * grace)
        if self.silent_limit is not None:
            silent = min(silent, self.silent_limit)
        return interval + grace, max(silent, interval + grace)

    # -- applying reports -------------------------------------------------------

    def apply(self, body, properties=None, now=None):
        """Apply one report (bytes, as it came) to its device: "applied", "duplicate",
        "invalid" (counted and logged) or "stale" (older than the device's newest).
        `properties` are its AMQP properties (message_id, timestamp, app_id, ...)."""
        # The watcher's hot path (bench_watch.py times it with 50,000 devices): few calls,
        # and the usual case first.
        properties = properties or {}
        message_id = properties.get("message_id")
        if message_id is not None:
            if message_id in self._seen:
                self.counts["duplicate"] += 1
                return "duplicate"
            if self._dedup_window:  # remember it, and forget the oldest beyond the window
                self._seen.add(message_id)
                self._seen_order.append(message_id)
                if len(self._seen_order) > self._dedup_window:
                    self._seen.discard(self._seen_order.popleft())
        report = self._parse(body, properties)
        if report is None:
            self.counts["invalid"] += 1
            return "invalid"
        change = self._update(report, properties, self.clock() if now is None else now)
        if change is None:
            self.counts["stale"] += 1
            return "stale"
        self.counts["applied"] += 1
        if change is not True and self.on_change:
            self._fire(*change)
        return "applied"

    def _parse(self, body, properties):
        """The report as a dict, or None (logged once per producer) when it is not one."""
        if body is None or len(body) > self.max_report_size:
            return self._garbage(properties, body, f"larger than {self.max_report_size} bytes")
        try:
            # json.loads(body), the short way for what pushers send: UTF-8 text that starts
            # with "{" (json.loads guesses the encoding and skips whitespace first).
            # Anything else, and any error, goes the long way.
            try:
                text = str(body, "utf-8")
                if text[:1] != "{":
                    raise ValueError("not an object first")
                report, end = self._scan_json(text, 0)
                if end != len(text) and text[end:].strip(" \t\n\r"):
                    raise ValueError("extra data")
            except (ValueError, StopIteration, TypeError):  # no JSON value at 0; a str body
                report = self._json_loads(body)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            return self._garbage(properties, body, "not JSON")
        if type(report) is not dict or report.get("status") not in _STATE_OF_STATUS:
            return self._garbage(properties, body, "not a pihace report (no valid status)")
        return report

    def _garbage(self, properties, body, why):
        size = properties.get("body_size", len(body) if body is not None else 0)
        producer = _bounded_text(properties.get("app_id") or properties.get("user_id") or "?", 60)
        if producer not in self._garbage_from and len(self._garbage_from) < 1000:
            self._garbage_from.add(producer)
            log.warning("ignored a message of %d bytes from %s: %s (logged once per producer)",
                        size, _printable(repr(producer)), why)
        return None

    def _update(self, report, properties, now):
        """Apply a parsed report to its device: None when it is stale (older than the
        device's newest), True when the device's state stays, else the change to announce."""
        component = report.get("component")
        name = (component.get("name") if type(component) is dict else None) or properties.get(
            "app_id") or properties.get("user_id") or "unknown"
        if type(name) is not str or len(name) > _NAME_LIMIT:
            name = _bounded_text(name)
        host = report.get("host") or ""
        if type(host) is not str or len(host) > _NAME_LIMIT:
            host = _bounded_text(host)
        interval = report.get("interval")
        if type(interval) not in (float, int) or not 0 < interval < 1e6:  # bool, NaN, text...
            interval = self.default_interval
        stamp = properties.get("timestamp")
        seen = min(now, stamp + 1.0) if type(stamp) is int and stamp > 0 else now
        status, rate, failure = report["status"], report.get("rate"), report.get("failure")
        with self._lock:
            device = self._devices.get((name, host))
            if device is None:
                device = self._devices[(name, host)] = Device(name, host)
            elif seen < device.last_seen:
                return None  # an older report that came late (an outbox, say)
            device.status, device.last_seen = status, seen
            device.reports += 1
            device.rate = (rate if type(rate) is str and len(rate) <= 20 else
                           _bounded_text(rate, 20)) if rate else None
            device.failing = tuple(_bounded_text(key) for key in itertools.islice(
                failure, _FAILING_LIMIT)) if type(failure) is dict and failure else ()
            if interval != device.interval:  # the limits follow it; grace and the rest are fixed
                device.interval, device.late_after = float(interval), self._limits(interval)[0]
            device.due = seen + device.late_after
            old = device.state
            new = "new" if old is None else _STATE_OF_STATUS[status]
            if new == old:
                return True
            device.state = new
            return device, old, new, report, now

    def check_ages(self, now=None):
        """Turn devices late or silent whose reports stopped; the changes, announced."""
        now = self.clock() if now is None else now
        changes = []
        with self._lock:
            for device in self._devices.values():
                if device.due > now:
                    continue
                late, silent = self._limits(device.interval)
                age = now - device.last_seen
                new = "silent" if age > silent else "late"
                device.due = math.inf if new == "silent" else device.last_seen + silent
                if new != device.state:
                    changes.append((device, device.state, new, None, now))
                    device.state = new
        for change in changes:
            self._fire(*change)
        return len(changes)

    def _fire(self, device, old, new, report, now):
        snapshot = device.snapshot(now)
        for callback in self.on_change:
            try:
                callback(snapshot, old, new, report)
            except Exception as exc:  # a bug in a callback must not stop the watcher
                log.error("on_change callback %s failed: %s", _printable(repr(callback)),
                          describe_error(exc))

    def _apply_delivery(self, delivery):
        properties = delivery.properties or {}
        if delivery.body is None:
            properties = dict(properties, body_size=delivery.body_size)
        self.apply(delivery.body, properties)

    # -- the connection ---------------------------------------------------------

    def _connect(self, deadline):
        """Connect (nodes in a random order, the one lost last tried last), declare what
        it needs and start consuming; stop() interrupts every wait for the broker."""
        order = failover_order(self.endpoints, self._last_node)
        try:
            connection = open_connection(
                order, deadline, timeout=self.timeout, heartbeat=self.heartbeat,
                connection_name=self.connection_name, ssl_context=self.ssl_context,
                socket_factory=self.socket_factory, interrupt=self._wakeup)
        except (PihaceError, OSError):
            self.parameters = order[-1]  # what the error is about
            raise
        self.parameters, self._connection = connection.parameters, connection
        self.connections_opened += 1
        channel = self._channel
        connection.open_channel(channel, deadline, confirm=False)
        queue = self.queue_name
        if self.declare:
            if self.exchange and self.exchange_type:
                connection.call(channel, "Exchange.Declare", deadline, exchange=self.exchange,
                                type=self.exchange_type, durable=True)
            own = not queue  # a server-named queue of its own, gone with the connection
            reply = connection.call(channel, "Queue.Declare", deadline, queue=queue,
                                    durable=not own, exclusive=own, auto_delete=own,
                                    arguments=self.queue_arguments)
            queue = reply.args["queue"]
            if self.exchange:
                connection.call(channel, "Queue.Bind", deadline, queue=queue,
                                exchange=self.exchange, routing_key=self.binding_key)
        connection.consume(channel, queue, deadline, prefetch=self.prefetch,
                           max_body_size=self.max_report_size)
        log.info("watching queue %s on %s", _printable(repr(queue)), self.parameters.safe_url)
        return connection

    def _drop(self):
        connection, self._connection = self._connection, None
        self._unacked = 0  # what it applied and did not acknowledge comes again
        if connection is not None:
            self._last_node = connection.parameters
            connection.abort()

    # -- the loop ---------------------------------------------------------------

    def run(self, stop_event=None, *, duration=None, idle=None):
        """Consume and apply reports until stop(), stop_event or Ctrl-C; or for at most
        `duration` seconds; or, given `idle`, until no report came for `idle` seconds
        (what --once uses to read what is waiting). Returns True when it consumed."""
        monotonic = time.monotonic
        ends = math.inf if duration is None else monotonic() + _seconds("duration", duration)
        consumed, quiet_since = False, None
        backoff = Backoff(spread=1.0)
        self._wakeup = Wakeup()
        try:
            while not self._stopped(stop_event) and monotonic() < ends:
                if self._connection is None:
                    if not self._open(backoff, ends):
                        continue
                    consumed, quiet_since = True, monotonic()
                wait = _ACK_PAUSE if self._unacked else min(
                    self.tick, 1.0 if stop_event is not None else self.tick,
                    max(0.0, ends - monotonic()))
                try:
                    if self._consume(wait):
                        quiet_since = monotonic()
                except Interrupted:
                    raise
                except (PihaceError, OSError) as exc:
                    self.last_error = describe_error(exc, self.parameters.safe_url)
                    log.warning("connection lost, opening a new one: %s", self.last_error)
                    self._drop()
                    self._wakeup.wait(backoff.failed())
                    continue
                self._tick()
                if idle is not None and monotonic() - quiet_since >= idle:
                    break
        except Interrupted:
            pass  # stop() while it waited for the broker
        except KeyboardInterrupt:
            log.info("interrupted: stopping")
        finally:
            self._wakeup.clear()  # a stop() already acted on must not cut the close short
            self._close()
            wakeup, self._wakeup = self._wakeup, None
            wakeup.close()
            self._stop_requested = False
        self.check_ages()
        return consumed

    def _open(self, backoff, ends):
        """Connect and start consuming: True; or False, after waiting as `backoff` says."""
        try:
            self._connect(min(ends, time.monotonic() + self.timeout))
        except Interrupted:
            raise
        except (PihaceError, OSError) as exc:
            self._drop()
            reason = self.last_error = describe_error(exc, self.parameters.safe_url)
            if not backoff.failures:
                log.warning("cannot watch: %s; trying again", reason)
            self._wakeup.wait(min(backoff.failed(), max(0.0, ends - time.monotonic())))
            return False
        if backoff.failures:
            log.warning("watching again after %d failed attempt(s)", backoff.failures)
        backoff.succeeded()
        self._next_tick = time.monotonic() + self.tick + 1.0  # the backlog comes first
        return True

    def _consume(self, wait):
        """Apply the reports that come within `wait` seconds: True when some came.

        Each is acknowledged once applied (at-least-once): one Ack (multiple) for each
        half of the prefetch, and one for what came before a pause."""
        connection, monotonic = self._connection, time.monotonic
        deliveries = connection.deliveries(wait, monotonic() + self.timeout)
        for delivery in deliveries:
            self._apply_delivery(delivery)
            self._unacked += 1
            if self._unacked >= self._ack_every:
                connection.ack(self._channel, delivery.delivery_tag,
                               monotonic() + self.timeout, multiple=True)
                self._unacked = 0
        if deliveries:
            self._last_tag = deliveries[-1].delivery_tag
        elif self._unacked:
            connection.ack(self._channel, self._last_tag, monotonic() + self.timeout,
                           multiple=True)
            self._unacked = 0
        return bool(deliveries)

    def _tick(self):
        """Look at the devices' ages once per tick (not while it cannot read: a watcher
        that lost its broker cannot tell a silent device from its own blindness)."""
        now = time.monotonic()
        if now >= self._next_tick:
            self._next_tick = now + self.tick
            self.check_ages()

    def _close(self):
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if self._unacked:  # applied: they must not come back
            try:
                connection.ack(self._channel, self._last_tag, time.monotonic() + 1.0,
                               multiple=True)
            except (PihaceError, OSError):
                pass
            self._unacked = 0
        connection.close(time.monotonic() + min(self.timeout, 5.0))

    def stop(self):
        """End run() at once; from any thread, or a signal handler."""
        self._stop_requested = True
        wakeup = self._wakeup
        if wakeup is not None:
            wakeup.wake()

    def _stopped(self, stop_event):
        return self._stop_requested or (stop_event is not None and stop_event.is_set())


# -- the fleet's state, as text -------------------------------------------------

def _health(device):
    """A device's state, with a new one's taken from its report: up, degraded, down..."""
    state = device["state"]
    return _STATE_OF_STATUS.get(device["status"], "up") if state == "new" else state


def fleet_exit_code(devices):
    """0 when every device is up (a new one by its report), 1 when some are degraded or
    late, 2 when some are down or silent: Nagios' OK, WARNING, CRITICAL."""
    return max([{"down": 2, "silent": 2, "degraded": 1, "late": 1}.get(_health(device), 0)
                for device in devices.values()], default=0)


def _worst_first(devices):
    rank = {state: index for index, state in enumerate(DEVICE_STATES)}
    return sorted(devices.values(), key=lambda d: (rank.get(d["state"], 0), -d["age"],
                                                   d["device"]))


def _state_counts(devices):
    counts = dict.fromkeys(DEVICE_STATES, 0)
    for device in devices.values():
        counts[device["state"]] = counts.get(device["state"], 0) + 1
    return counts


def _prometheus_label(value):
    """A label value: backslash, quote and newline escaped, other control characters
    replaced (the text format has no escape for them)."""
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return text.translate({code: "\ufffd" for code in _CONTROL_ESCAPES if code != 10})


def format_fleet(devices, output="json"):
    """The fleet (Watcher.devices) as "json", "nagios" (status line, perfdata, then one
    line per device not up) or "prometheus" (the text exposition format)."""
    if output == "json":
        import json  # here, not at the top: slow to import (see the imports)

        return json.dumps({"status": ("OK", "WARNING", "CRITICAL")[fleet_exit_code(devices)],
                           "counts": _state_counts(devices),
                           "devices": _worst_first(devices)}, indent=2)
    counts = _state_counts(devices)
    if output == "nagios":
        status = ("OK", "WARNING", "CRITICAL")[fleet_exit_code(devices)]
        summary = ", ".join(f"{n} {state}" for state, n in counts.items() if n) or "no devices"
        perfdata = " ".join(f"{state}={n};;;0" for state, n in counts.items())
        lines = [f"PIHACE FLEET {status} - {len(devices)} devices: {summary} | {perfdata}"]
        lines += [f"{_printable(d['device']).replace('|', '/')}: {d['state']}, last seen "
                  f"{d['age']:.0f}s ago" + (f", failing: {_printable(', '.join(d['failing']))}"
                                            .replace("|", "/") if d["failing"] else "")
                  for d in _worst_first(devices) if _health(d) != "up"]
        return "\n".join(lines)
    if output != "prometheus":
        raise ValueError(f'output must be "json", "nagios" or "prometheus", got {output!r}')
    lines = ["# HELP pihace_device_up 1 when the device's newest report says Available and it "
             "is not late, else 0.",
             "# TYPE pihace_device_up gauge"]
    rows = _worst_first(devices)
    labels = [f'device="{_prometheus_label(d["device"])}",name="{_prometheus_label(d["name"])}",'
              f'host="{_prometheus_label(d["host"])}"' for d in rows]
    lines += [f'pihace_device_up{{{label},state="{d["state"]}"}} '
              f'{1 if _health(d) == "up" else 0}'
              for label, d in zip(labels, rows)]
    lines += ["# HELP pihace_device_last_seen_timestamp_seconds When the device's newest "
              "report was sent.", "# TYPE pihace_device_last_seen_timestamp_seconds gauge"]
    lines += [f"pihace_device_last_seen_timestamp_seconds{{{label}}} {d['last_seen']:.3f}"
              for label, d in zip(labels, rows)]
    lines += ["# HELP pihace_devices Devices in each state.", "# TYPE pihace_devices gauge"]
    lines += [f'pihace_devices{{state="{state}"}} {n}' for state, n in counts.items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# HTTP server: /livez, /readyz, /health, /metrics on http.server, and the cache that
# runs the checks at most once per period, however many requests arrive
# ---------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------
# compatibility: pihace 1.0.0's module names point at this one file
# ---------------------------------------------------------------------------

class _Loop:
    """A report every `interval` seconds until stop() (from any thread), a stop_event
    or Ctrl-C, for the adapters below; a failed round is logged, never raised."""

    def _loop(self, step, interval, stop_event, what):
        interval = _seconds("interval", interval)
        stop = self._stop = stop_event or threading.Event()
        log.info("%s every %gs", what, interval)
        next_round = time.monotonic()
        try:
            while not stop.is_set():
                try:
                    step()
                except Exception:  # a bug in one round: logged, and the loop goes on
                    log.exception("%s failed", what)
                next_round += interval * (1 + (time.monotonic() - next_round) // interval)
                stop.wait(max(0.0, next_round - time.monotonic()))
        except KeyboardInterrupt:
            log.info("interrupted: stopping")

    def stop(self):
        """End push_forever_in_loop() / run_forever_in_loop() at once."""
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()


class ElasticSearchPusher(_Loop):
    """pihace 1.0.0's ElasticSearchPusher, over HTTP with the standard library: each
    report is indexed as a document of `index` (POST /index/_doc). A user name and
    password in `es_url` go as HTTP basic authentication and are never shown.
    push() returns True or False, as in 1.0.0; `last_error` says why it failed
    (it is logged too, where 1.0.0 printed a traceback)."""

    def __init__(self, healthcheck, es_url, index="pihace-health", timeout=10):
        if not callable(getattr(healthcheck, "check", None)):
            raise TypeError("healthcheck must be a HealthCheck (or have a check() method), got "
                            f"{type(healthcheck).__name__}")
        if not isinstance(index, str) or not index or index != index.lower() \
                or any(c in index for c in '\\/*?"<>| ,#:'):
            raise ValueError(f"index must be a lowercase Elasticsearch index name, got {index!r}")
        self.safe_url = _http_url(es_url, "es_url")
        self.healthcheck, self.es_url, self.index = healthcheck, es_url, index
        self.timeout, self.last_error = _seconds("timeout", timeout), None

    def __repr__(self):
        return f"<ElasticSearchPusher {self.safe_url} index={self.index!r}>"

    def push(self):
        """Take a report and index it: True when Elasticsearch stored it, else False."""
        import json  # here, not at the top: slow to import (see the imports)
        from urllib.parse import quote

        report = self.healthcheck.check(output="dict")
        body = json.dumps(report, default=str).encode("utf-8")  # a name that is a Path, say
        try:
            status, phrase, _, _ = _http_exchange(
                self.es_url, f"/{quote(self.index, safe='')}/_doc", method="POST",
                headers={"Content-Type": "application/json"}, body=body, timeout=self.timeout,
                limit=65536)
            self.last_error = None if 200 <= status < 300 else \
                f"Elasticsearch answered HTTP {status} {phrase}".rstrip() + f" ({self.safe_url})"
        except _http_errors() as exc:
            self.last_error = f"{_http_failure(exc)} ({self.safe_url})"
        if self.last_error is None:
            return True
        log.warning("cannot index the report: %s", self.last_error)
        return False

    def push_forever_in_loop(self, interval=60, stop_event=None):
        """push() every `interval` seconds until stop(), stop_event or Ctrl-C."""
        self._loop(self.push, interval, stop_event,
                   f"indexing a report in {self.safe_url}/{self.index}")


class MongoStorage(_Loop):
    """pihace 1.0.0's MongoStorage: each report, with a `logged_at` date, is inserted in
    `collection` of `database`. It needs pymongo (pip install pymongo): inserting
    documents is more of MongoDB's protocol than pihace speaks. A server that accepts
    but does not answer fails a save after `timeout` seconds (pymongo's connectTimeoutMS
    and socketTimeoutMS, unless the dsn sets them; pymongo's own default waits forever)."""

    def __init__(self, healthcheck, dsn, database="pihace", collection="health_logs",
                 timeout=10):
        try:
            import pymongo  # noqa: the driver pihace 1.0.0 used; only this storage needs it
        except ImportError:
            raise ModuleNotFoundError("MongoStorage needs pymongo, which is not installed: "
                                      "pip install pymongo", name="pymongo") from None
        from urllib.parse import parse_qs, urlsplit  # here, not at the top: slow to import

        milliseconds = int(_seconds("timeout", timeout) * 1000)
        self.healthcheck, self.dsn = healthcheck, dsn
        self.database, self.collection = database, collection
        self._driver_error = pymongo.errors.PyMongoError  # what save() turns into False
        try:
            given = {key.lower() for key in parse_qs(urlsplit(dsn).query)}
        except (TypeError, ValueError, AttributeError):
            given = set()  # pymongo says what is wrong with the dsn
        options = {name: milliseconds for name in ("connectTimeoutMS", "socketTimeoutMS")
                   if name.lower() not in given}
        try:
            self.client = pymongo.MongoClient(dsn, serverSelectionTimeoutMS=2000, **options)
            self.db = self.client[database]
            self.col = self.db[collection]
        except pymongo.errors.PyMongoError as exc:
            raise RuntimeError(f"Failed to connect to MongoDB: {_text(exc)}") from None

    def save(self):
        """Take a report and insert it: True when MongoDB stored it, else False (logged)."""
        import datetime  # here, not at the top: only this storage needs it

        report = self.healthcheck.check(output="dict")
        report["logged_at"] = datetime.datetime.now(datetime.timezone.utc)
        try:
            self.col.insert_one(report)
            return True
        except self._driver_error as exc:
            log.warning("cannot store the report in MongoDB: %s", _printable(_text(exc)))
            return False

    def run_forever_in_loop(self, interval=60, stop_event=None):
        """save() every `interval` seconds until stop(), stop_event or Ctrl-C."""
        self._loop(self.save, interval, stop_event,
                   f"storing a report in MongoDB {self.database}.{self.collection}")


def _system_checker():
    """The "system" plugin of a config file: passes when this machine's figures can be read."""
    figures = get_system_info()
    read = {key: value for key, value in figures.items() if value is not None}
    return bool(read), ", ".join(f"{key} {value}" for key, value in read.items()
                                 if key in ("cpu_usage", "memory_usage", "disk_usage"))


_CONFIG_TYPES = {  # section: {type: the name of what makes it, looked up when a config is read}
    "plugins": {"http": "HTTP", "influxdb": "InfluxDB", "mongodb": "MongoDB", "mysql": "MySQL",
                "elasticsearch": "ElasticSearch", "system": "_system_checker"},
    "providers": {"web_provider": "WebProvider", "prometheus_provider": "PrometheusProvider"},
    "pushers": {"elasticsearch_pusher": "ElasticSearchPusher", "amqp_pusher": "AMQPPusher"},
    "storages": {"mongodb_storage": "MongoStorage"},
}


def read_config(path):
    """A config file as a dict: YAML (.yml, .yaml) with PyYAML when it is installed, JSON,
    or TOML (.toml, Python 3.11+). A YAML file without PyYAML is read as JSON when it is
    JSON (JSON is YAML too); otherwise the error says what to do."""
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    with open(path, "rb") as file:
        data = file.read()
    if suffix == ".toml":
        try:
            import tomllib  # novermin: Python 3.11+; older ones get the error below
        except ImportError:
            raise ValueError(f"{path}: TOML needs Python 3.11 or newer (tomllib); "
                             "write the same structure as JSON") from None
        try:
            return tomllib.loads(data.decode("utf-8"))
        except ValueError as exc:  # tomllib.TOMLDecodeError, UnicodeDecodeError
            problem = f"not valid TOML: {_text(exc)}"
        raise ValueError(f"{path}: {problem}")  # here: no __context__ to quote the file
    import json  # here, not at the top: slow to import (see the imports)

    if suffix in (".yml", ".yaml"):
        try:
            import yaml  # PyYAML, optional: used when it is installed
        except ImportError:
            try:
                return json.loads(data)
            except (ValueError, RecursionError):
                raise ValueError(f"{path}: reading YAML needs PyYAML, which is not installed "
                                 "(pip install pyyaml); or write the same structure as JSON "
                                 "(.json), or TOML (.toml, Python 3.11+)") from None
        try:
            return yaml.safe_load(data)
        except yaml.YAMLError as exc:  # its text spans lines and quotes the file: one line
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = getattr(exc, "problem", None) or (str(exc).splitlines() or [""])[0] \
                or type(exc).__name__  # a ReaderError has no problem, and a first line
            problem = f"not valid YAML: {_text(problem)}{where}"
        except RecursionError:
            problem = "nested too deep"
        raise ValueError(f"{path}: {problem}")  # here: no __context__ to quote the file
    try:
        return json.loads(data)
    except ValueError as exc:
        problem = f"not valid JSON: {exc}"
    except RecursionError:
        problem = "nested too deep"
    raise ValueError(f"{path}: {problem}")


def _shown(value, limit=100):
    """A value from a config file, for an error message: escaped and cut to `limit`."""
    text = _printable(_text(value))
    return text if len(text) <= limit else f"{text[:limit]}..."


def _secrets(options):
    """The passwords an entry's options may hold (in URLs, or as such), longest first, to be
    kept out of an error raised by what the options were given to."""
    from urllib.parse import unquote, urlsplit  # here, not at the top: slow to import

    found = set()
    for key, value in options.items():
        if isinstance(value, str) and "://" in value and "@" in value:
            userinfo = value.partition("://")[2].rpartition("@")[0]
            found.update((userinfo, userinfo.partition(":")[2]))
            try:
                found.add(unquote(urlsplit(value).password or ""))
            except ValueError:
                pass
        elif isinstance(value, (list, tuple)) and key == "basic_auth" and len(value) == 2:
            found.add(str(value[1]))
        elif "password" in str(key).lower() or "token" in str(key).lower():
            found.add(str(value))
    return sorted((secret for secret in found if secret), key=len, reverse=True)


def _make(section, entry, *args):
    """The checker, provider, pusher or storage that one entry of a config describes."""
    if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
        got = (f"a {type(entry).__name__}" if not isinstance(entry, dict)
               else "no type" if "type" not in entry
               else f"a type that is a {type(entry['type']).__name__}")
        raise ValueError(f"each entry of {section} needs a type (a name such as "
                         f"{next(iter(_CONFIG_TYPES[section]))}), got {got}")
    kind, options = entry["type"], entry.get("config") or {}
    name = _CONFIG_TYPES[section].get(kind)
    if name is None:
        what = {"plugins": "checker"}.get(section, section[:-1])
        raise ValueError(f"Unknown {what} type: {_shown(kind)} (known: "
                         f"{', '.join(_CONFIG_TYPES[section])})")
    if not isinstance(options, dict):
        raise ValueError(f"{section[:-1]} {kind!r}: its config must be a mapping, got "
                         f"{type(options).__name__}")
    maker = globals().get(name)  # looked up now: a provider may come with a newer pihace.py
    if maker is None:
        raise ValueError(f"{section[:-1]} type {kind!r} needs {name}, which this pihace.py "
                         f"({__version__}) does not have")
    if name == "_system_checker":
        return maker
    try:
        return maker(*args, **options)
    except (TypeError, ValueError, ImportError, RuntimeError) as exc:  # MongoStorage: the last two
        message = _text(exc)
    for secret in _secrets(options):
        message = message.replace(secret, "***")
    raise ValueError(f"{section[:-1]} {kind!r}: {_printable(message)}")  # no __context__ either


_LOOP_OPTIONS = {"pushers": "push_config", "storages": "store_config"}


def _loop_interval(section, entry):
    """The interval of a pusher's or storage's loop in a config: 60 when none is given, else
    a positive number of seconds (below a million); ValueError naming the entry otherwise."""
    key = _LOOP_OPTIONS[section]
    options = entry.get(key) or {}
    if not isinstance(options, dict):
        raise ValueError(f"{section[:-1]} {entry['type']!r}: {key} must be a mapping, got "
                         f"{type(options).__name__}")
    try:
        return _seconds("interval", options.get("interval", 60))
    except ValueError:
        raise ValueError(f"{section[:-1]} {entry['type']!r}: {key} interval must be a positive "
                         f"number of seconds, below a million, got "
                         f"{_shown(repr(options.get('interval')))}") from None


def _config_part(config, key, kind):
    """config[key], or an empty `kind` when it is missing or null; ValueError otherwise."""
    value = config.get(key)
    if value is None:
        return kind()
    if not isinstance(value, kind):
        raise ValueError(f"{key} must be a {'mapping' if kind is dict else 'list'}, got "
                         f"{type(value).__name__}")
    return value


def load_healthcheck_from_yaml(path):
    """pihace 1.0.0's loader: the HealthCheck, providers, pushers and storages that a config
    file describes, as {"healthcheck", "providers", "pushers", "storages", "config"}.

    The file is YAML (with PyYAML), JSON or TOML (see read_config). Nothing is
    started: ``pihace --config FILE`` starts the providers and runs the loops. What the
    file gets wrong is a ValueError that names it, and shows no password.
    """
    config = read_config(path)
    if not isinstance(config, dict):
        raise ValueError(f"{os.fspath(path)}: expected a mapping at the top, got "
                         f"{type(config).__name__}")
    try:
        instance = _config_part(config, "instance", dict)
        sections = {section: _config_part(config, section, list) for section in _CONFIG_TYPES}
        for key, kinds in (("with_system", bool), ("name", (str, int, float)),
                           ("version", (str, int, float))):
            if key in instance and not isinstance(instance[key], kinds) \
                    or key != "with_system" and isinstance(instance.get(key), bool):
                raise ValueError(f"instance {key} must be "
                                 f"{'true or false' if kinds is bool else 'a string'}, got "
                                 f"{type(instance[key]).__name__}")
        for section, key in _LOOP_OPTIONS.items():
            for entry in sections[section]:
                if isinstance(entry, dict) and isinstance(entry.get("type"), str):
                    _loop_interval(section, entry)
        hc = HealthCheck(with_system=instance.get("with_system", False),
                         name=instance.get("name", "unknown"),
                         version=instance.get("version", "0.0.1"))
        for entry in sections["plugins"]:
            checker = _make("plugins", entry)
            hc.register(str(entry.get("name", entry["type"])).replace(" ", "_"), checker)
        return {"healthcheck": hc,
                "providers": [_make("providers", entry, hc) for entry in sections["providers"]],
                "pushers": [_make("pushers", entry, hc) for entry in sections["pushers"]],
                "storages": [_make("storages", entry, hc) for entry in sections["storages"]],
                "config": config}
    except ValueError as exc:
        problem = str(exc)
    raise ValueError(f"{os.fspath(path)}: {problem}")  # here: no __context__ to quote the file


_ALIASES_1_0_0 = ("plugins.mysql", "plugins.mongodb", "plugins.influxdb", "plugins.elasticsearch",
                  "pusher.elasticsearch", "storage", "storage.mongodb", "types", "loader")
# pihace.types: 1.0.0's Literal names, made on first use (typing is slow to import)
_TYPES_1_0_0 = {
    "PluginType": ("http", "influxdb", "mongodb", "mysql", "elasticsearch", "system"),
    "PusherType": ("elasticsearch_pusher", "amqp_pusher"),
    "StorageType": ("mongodb_storage",),
    "ProviderType": ("web_provider", "prometheus_provider"),
}


def __getattr__(name):  # PEP 562: only for names the module does not define
    if name in _TYPES_1_0_0:
        import typing  # here, not at the top: slow to import, and only pihace.types needs it

        value = typing.Literal[_TYPES_1_0_0[name]]
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _register_aliases():
    module = sys.modules[__name__]
    sys.modules.setdefault("pihace", module)
    for alias in ("healthcheck", "pusher", "pusher.messaging", "system_info", "utils",
                  "plugins", "plugins.http") + _ALIASES_1_0_0:
        sys.modules.setdefault(f"pihace.{alias}", module)
    # ``import pihace.pusher.messaging`` then reaches attributes of the parent
    for attribute in ("healthcheck", "pusher", "messaging", "system_info", "utils", "plugins",
                      "http") + tuple({alias.rpartition(".")[2] for alias in _ALIASES_1_0_0}):
        setattr(module, attribute, module)


_register_aliases()


class _WebProviderServer(HealthServer):
    """HealthServer with pihace 1.0.0's WebProvider root: ``/`` says the server runs."""

    def respond(self, path, query, accept):
        if path == "/":
            return (200, "application/json",
                    b'{"status":"ok","message":"pihace web server is running"}', [])
        return super().respond(path, query, accept)


class WebProvider:
    """pihace 1.0.0's ``pihace.providers.web.WebProvider``: its constructor and serve(),
    on HealthServer (/healthcheck, /, and HealthServer's endpoints). There is no
    ``.app``: pihace 1.0.0's FastAPI application does not exist here."""

    _server_class = _WebProviderServer

    def __init__(self, healthcheck, host="0.0.0.0", port=8000):
        if not isinstance(host, str):  # checked now, not when serve() runs in a thread
            raise ValueError(f"host must be a host name or an IP address, got "
                             f"{type(host).__name__}")
        _number("port", port, lambda v: 0 <= v < 65536, "an integer from 0 to 65535", int)
        self.healthcheck, self.host, self.port = healthcheck, host, port

    def serve(self):
        """Serve until interrupted (Ctrl-C), as uvicorn.run() did."""
        server = self._server_class(self.healthcheck, self.host, self.port)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()


class PrometheusProvider(WebProvider):
    """pihace 1.0.0's ``pihace.providers.prometheus.PrometheusProvider``: /metrics (with
    HealthServer's metric names, not prometheus_client's) and the other endpoints."""

    _server_class = HealthServer

    def __init__(self, healthcheck, host="0.0.0.0", port=9090):
        super().__init__(healthcheck, host, port)


def _register_provider_aliases():
    module = sys.modules[__name__]
    for alias in ("providers", "providers.web", "providers.prometheus"):
        sys.modules.setdefault(f"pihace.{alias}", module)
    for attribute in ("providers", "web", "prometheus"):
        setattr(module, attribute, module)


_register_provider_aliases()


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------

_EXAMPLES = """\
examples:
  pihace                      this machine's report as JSON, as `pihace check` prints it
  pihace check --format str --tcp db=localhost:5432 --http web=http://localhost:8080/health
  pihace check --no-system --disk data=/var/lib/app:10 --amqp mq=amqp://guest:guest@localhost/
  PIHACE_AMQP_PASSWORD=secret pihace push --url amqp://app@broker/ --name app \\
      --component-version 1.2 --interval 60

  pihace serve --listen 0.0.0.0:8000 --tcp db=localhost:5432 --optional db

exit codes: 0 Available (push: confirmed), 1 Partially Available, 2 Unavailable (push: not
confirmed), 3 usage or internal error; `pihace check --help` lists the formats and the
Docker mode. Environment: PIHACE_AMQP_URL, PIHACE_AMQP_PASSWORD.
"""
_CHECK_EPILOG = """\
formats (--format):
  json         the report (the default)
  str          a few lines for people
  health+json  application/health+json, draft-inadarei-api-health-check (pass/warn/fail)
  prometheus   Prometheus text format 0.0.4; --textfile PATH writes it to a file for
               node_exporter's textfile collector (atomically, without timestamps)
  nagios       one status line and perfdata, per the Monitoring Plugins guidelines

exit codes (--exit-codes nagios, the default, as Nagios plugins):
  0 Available (OK), 1 Partially Available (WARNING), 2 Unavailable (CRITICAL),
  3 usage or internal error (UNKNOWN)
exit codes with --exit-codes docker (Docker's HEALTHCHECK reserves 2):
  0 every check not named by --optional passed, 1 otherwise (errors included)

--timeout bounds the whole command, every attempt included: each attempt of each check
gets 0.9 x SECONDS / (1 + retries), and a check still running then is reported as timed out.
"""
_CHECK_OPTIONS = {  # --option: (its value, what makes the check pass)
    "tcp": ("NAME=HOST:PORT", "a TCP connection opens ([::1]:5672 for IPv6)"),
    "http": ("NAME=URL", "a GET answers 2xx or 3xx (redirects are not followed)"),
    "disk": ("NAME=PATH:MIN_FREE_PERCENT", "at least that much space is free"),
    "amqp": ("NAME=URL", "an AMQP connection opens"),
}


def _checker(kind, spec, http_timeout):
    """(name, checker) from --tcp/--http/--disk/--amqp NAME=...; ValueError if malformed."""
    name, _, target = spec.partition("=")
    if not name or not target or "://" in name:
        raise ValueError(f"expected {_CHECK_OPTIONS[kind][0]}")
    if kind == "http":
        return name, HTTP(target, http_timeout)
    if kind == "amqp":
        return name, AMQP(_amqp_urls([target], os.environ.get("PIHACE_AMQP_PASSWORD"))[0])
    head, _, tail = target.rpartition(":")
    if not head or not tail.replace(".", "", kind == "disk").isdigit():
        raise ValueError(f"expected {_CHECK_OPTIONS[kind][0]}, a number after the last ':'")
    if kind == "disk":
        return name, Disk(head, float(tail))
    host = head[1:-1] if head.startswith("[") and head.endswith("]") else head
    if ":" in head and host == head:
        raise ValueError("write an IPv6 address in brackets, as in [::1]:5672")
    return name, TCP(host, int(tail))


def _amqp_urls(urls, password):
    """The URLs of --url or --amqp (else PIHACE_AMQP_URL), with `password` (from
    PIHACE_AMQP_PASSWORD) percent-encoded into each that has none."""
    from urllib.parse import quote, urlsplit  # here, not at the top: slow to import

    urls = list(urls or [os.environ.get("PIHACE_AMQP_URL") or ""])
    if not urls[0]:
        raise ValueError("push needs --url or PIHACE_AMQP_URL")
    for index, url in enumerate(urls if password else ()):
        try:
            parts = urlsplit(url)
        except ValueError:  # left as it is: AMQPParameters says what is wrong, masked
            continue
        if parts.password is None:
            user, at, host = parts.netloc.rpartition("@")
            netloc = f"{user if at else 'guest'}:{quote(password, safe='')}@{host}"
            urls[index] = parts._replace(netloc=netloc).geturl()
    return urls


def _mask_user_info(text):
    """`text` with all between its first :// and the last @ after it written ***, so that no
    piece of a URL's user name or password shows, whatever its shape (spaces, @, quotes) and
    however many arguments argparse joined into `text`. The full-width and small commercial
    at count as @: NFKC, which urllib applies to host parts, turns them into one."""
    start = text.find("://") + 3
    end = max(text.rfind(at) for at in "@\uff20\ufe6b")
    return f"{text[:start]}***{text[end:]}" if 3 <= start <= end else text


def _parser():
    """The pihace command's argument parser: an error is one line and exit code 3."""
    import argparse  # here, not at the top: importing pihace should not pay for it

    class Parser(argparse.ArgumentParser):
        def error(self, message):  # one line and exit code 3, instead of usage and 2
            self.exit(3, f"pihace: error: {_printable(_mask_user_info(message))}\n")

    common = Parser(add_help=False)
    common.add_argument("--name", help="component name in the report")
    common.add_argument("--component-version", metavar="VERSION")
    common.add_argument("--system", action="store_true", default=True,
                        help="include system information (default)")
    common.add_argument("--no-system", dest="system", action="store_false")
    for kind, (metavar, passes) in _CHECK_OPTIONS.items():
        common.add_argument(f"--{kind}", action="append", default=[], metavar=metavar,
                            help=f"a check that passes when {passes}; repeatable")
    common.add_argument("--http-timeout", type=float, default=5.0, metavar="SECONDS")
    common.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="of messages on stderr (default: INFO with --interval, else WARNING)")
    parser = Parser(prog="pihace", description="Health checks, printed or pushed to an AMQP "
                    "broker.", epilog=_EXAMPLES, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--version", action="version", version=f"pihace {__version__}")
    parser.add_argument("--config", metavar="FILE", help="run what a pihace 1.0.0 config file "
                        "(YAML with PyYAML, JSON, or TOML) describes, until SIGTERM or Ctrl-C")
    commands = parser.add_subparsers(dest="command", metavar="{check,push,serve,watch}")
    probe = Parser(add_help=False)
    probe.add_argument("--retries", type=int, metavar="N",
                       help="extra attempts of a check after a failed one (default 2)")
    probe.add_argument("--optional", action="append", default=[], metavar="NAME",
                       help="a check whose failure makes the status Partially Available, "
                       "never Unavailable; repeatable")
    _check_parser(commands, common, probe)
    _push_parser(commands, common)
    _serve_parser(commands, common, probe)
    _watch_parser(commands, Parser)
    return parser


def _check_parser(commands, common, probe):
    """pihace check: print the report once."""
    import argparse  # loaded already by _parser()

    check = commands.add_parser("check", parents=[common, probe], help="print the report "
                                "(default)", epilog=_CHECK_EPILOG,
                                formatter_class=argparse.RawTextHelpFormatter)
    check.add_argument("--format", choices=("json", "str", "health+json", "prometheus", "nagios"),
                       help="of the output (default json; see below)")
    check.add_argument("--timeout", type=float, metavar="SECONDS",
                       help="one deadline for the whole command, all attempts included")
    check.add_argument("--textfile", metavar="PATH", help="write the report in Prometheus text "
                       "format to PATH (printed too only with --format)")
    check.add_argument("--exit-codes", choices=("nagios", "docker"), default="nagios",
                       help="nagios: 0/1/2/3 (default); docker: 0 or 1 only")


def _push_parser(commands, common):
    """pihace push: publish the report, once or every --interval."""
    push = commands.add_parser("push", parents=[common], help="publish the report to a queue")
    push.add_argument("--url", action="append", help="amqp[s]:// URL; repeat for failover")
    push.add_argument("--queue", default="pihace.healthcheck")
    push.add_argument("--exchange", default="")
    push.add_argument("--routing-key", help="default: the queue name")
    push.add_argument("--interval", type=float, metavar="SECONDS",
                      help="push every SECONDS until stopped (default: once)")
    push.add_argument("--buffer-size", type=int, default=1000, metavar="REPORTS")
    push.add_argument("--spool", metavar="DIR",
                      help="keep undelivered reports in this folder, so that they survive a "
                      "restart (delivered first, in order, by the next run)")
    push.add_argument("--max-connection-age", type=float, metavar="SECONDS",
                      help="with several --url: replace a connection this old at the next "
                      "report, at a random node (spreads a fleet again after a node returns)")
    push.add_argument("--no-declare", dest="declare", action="store_false",
                      help="publish without declaring the queue or exchange (it exists already, "
                      "or the user may not configure)")
    push.add_argument("--queue-arg", action="append", default=[], metavar="KEY=VALUE",
                      help="an argument of the declared queue, e.g. x-max-length=1000 or "
                      "x-queue-type=quorum (a whole number is sent as one, true/false as a "
                      "boolean); repeatable")


def _serve_parser(commands, common, probe):
    """pihace serve: health over HTTP."""
    serve = commands.add_parser("serve", parents=[common, probe], help="answer /livez, /readyz, "
                                "/health and /metrics over HTTP")
    serve.add_argument("--listen", default="127.0.0.1:8000", metavar="HOST:PORT",
                       help="address to listen on (default 127.0.0.1:8000, this machine only; "
                       "0.0.0.0:8000 or [::]:8000 in a container)")
    serve.add_argument("--cache-seconds", type=float, default=1.0, metavar="SECONDS",
                       help="run the checks at most once per SECONDS (default 1)")
    serve.add_argument("--background", action="store_true",
                       help="run the checks every --cache-seconds in a thread: requests never "
                       "wait")
    serve.add_argument("--partial-ready", action="store_true",
                       help="/readyz answers 200 when Partially Available too")


def _watch_parser(commands, parser_class):
    watch = commands.add_parser("watch", help="follow the fleet's reports: who is up, late, "
                                "silent", description="Consume the reports pushers send and "
                                "keep one state per device.")
    watch.add_argument("--url", action="append", help="amqp[s]:// URL; repeat for failover")
    watch.add_argument("--queue", default="pihace.healthcheck",
                       help="queue to consume (with --exchange: '' for a queue of its own)")
    watch.add_argument("--exchange", default="", help="bind the queue to this exchange, so "
                       "that several watchers each see every report")
    watch.add_argument("--exchange-type", help="declare the exchange (fanout, topic...)")
    watch.add_argument("--binding-key", default="#", metavar="KEY")
    watch.add_argument("--interval", type=float, default=60.0, metavar="SECONDS",
                       help="expected interval of reports that do not say theirs (default 60)")
    watch.add_argument("--grace", type=float, metavar="SECONDS",
                       help="late after interval + grace (default: half the interval, >= 2 s)")
    watch.add_argument("--silent-grace", type=float, metavar="SECONDS",
                       help="silent after interval + this (default: 4 x grace)")
    watch.add_argument("--silent-after", type=float, metavar="SECONDS",
                       help="silent after this many seconds without a report, at the latest")
    watch.add_argument("--once", action="store_true",
                       help="read what is waiting, print the fleet's state and exit")
    watch.add_argument("--wait", type=float, default=5.0, metavar="SECONDS",
                       help="with --once: read for at most this long (default 5)")
    watch.add_argument("--format", choices=("json", "nagios", "prometheus"), default="json",
                       help="with --once (default json)")
    watch.add_argument("--on-change", metavar="COMMAND", help="run COMMAND (split like a "
                       "shell would, never run by one) on each change, with PIHACE_DEVICE, "
                       "PIHACE_OLD_STATE, PIHACE_NEW_STATE and PIHACE_REPORT in its environment")
    watch.add_argument("--hook-timeout", type=float, default=10.0, metavar="SECONDS")
    watch.add_argument("--listen", metavar="HOST:PORT", help="serve the fleet as Prometheus "
                       "metrics (/metrics) and JSON (/devices)")
    watch.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


def _health_check(args):
    """The HealthCheck that the arguments describe; ValueError names a bad option."""
    http_timeout = _seconds("--http-timeout", args.http_timeout)
    hc = HealthCheck(with_system=args.system, name=args.name, version=args.component_version)
    for kind in _CHECK_OPTIONS:
        for spec in getattr(args, kind):
            name = spec.partition("=")[0] if "=" in spec else ""
            shown = f" {name}" if name and "://" not in name else ""  # never a password
            try:
                name, checker = _checker(kind, spec, http_timeout)
                if name in hc.checkers:
                    raise ValueError("a second check with this name")
            except ValueError as exc:
                raise ValueError(f"--{kind}{shown}: {exc}") from None
            hc.register(name, checker, **_attempts(args, checker))
    for name in getattr(args, "optional", ()):
        if name not in hc.checkers:
            raise ValueError(f"--optional {_printable(name)}: no check of that name")
    return hc


def _attempts(args, checker):
    """register()'s timeout and retries for a built-in checker: its own timeout and a second
    more, --retries (default 2); with --timeout, short enough for every attempt to end in time."""
    retries = getattr(args, "retries", None)
    retries = 2 if retries is None else _number("--retries", retries, lambda v: 0 <= v <= 100,
                                                "an integer from 0 to 100", int)
    timeout = getattr(checker, "timeout", 4) + 1
    if args.command == "check" and args.timeout is not None:  # 10% left for the rest
        timeout = min(timeout, _seconds("--timeout", args.timeout) * 0.9 / (1 + retries))
    return {"timeout": timeout, "retries": retries}


def _check(args, hc):
    """pihace check: print the report (or write it to --textfile); the exit code says its
    status."""
    report = mark_optional(hc.check("dict"), args.optional)
    if args.textfile:
        try:
            _write_textfile(args.textfile, format_prometheus(report))
        except OSError as exc:
            print(f"pihace: cannot write {_printable(args.textfile)}: {describe_error(exc)}",
                  file=sys.stderr)
            return 1 if args.exit_codes == "docker" else 3
    if args.format or not args.textfile:
        print(format_report(report, args.format or "json"))
    if args.exit_codes == "docker":
        return 0 if required_checks_passed(report) else 1
    return {"Available": 0, "Partially Available": 1}.get(report["status"], 2)


def _write_textfile(path, text):
    """Write `text` to `path` through a temporary file in the same folder, renamed over it:
    a reader (node_exporter) sees the old file or the new one, never a part."""
    import tempfile  # here, not at the top: only --textfile needs it

    folder, name = os.path.split(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide it from node_exporter's user
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def _listen_address(text):
    """(host, port) from --listen HOST:PORT ([::]:8000 for IPv6)."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen: expected HOST:PORT such as 0.0.0.0:8000 or [::]:8000, "
                         f"got {_printable(repr(text))}")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise ValueError("--listen: write an IPv6 address in brackets, as in [::1]:8000")
    return host.strip("[]"), int(port)


def _serve(args, hc):
    """pihace serve: answer health requests over HTTP until SIGTERM or Ctrl-C."""
    import signal  # here, not at the top: only the command line's servers need it

    try:
        host, port = _listen_address(args.listen)
        server = HealthServer(hc, host, port, cache_seconds=args.cache_seconds,
                              background=args.background, partial_ready=args.partial_ready,
                              optional=args.optional)
    except ValueError as exc:
        print(f"pihace: error: {_printable(exc)}", file=sys.stderr)
        return 3
    except OSError as exc:
        print(f"pihace: cannot listen on {_printable(args.listen)}: {describe_error(exc)}",
              file=sys.stderr)
        return 3
    stopped = threading.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = ([signal.signal(number, lambda *_: stopped.set()) for number in signals]
                if in_main_thread else [])
    try:
        with server:
            print(f"pihace: serving {server.url} (livez, readyz, health, metrics)",
                  file=sys.stderr, flush=True)
            stopped.wait()
    finally:
        for number, previous_handler in zip(signals, previous):
            signal.signal(number, previous_handler)
    return 0


def _exit_code(argv, code):
    """`code`, or 1 for any failure with --exit-codes docker (Docker reserves 2)."""
    docker = "--exit-codes=docker" in argv or any(
        option == "--exit-codes" and value == "docker" for option, value in zip(argv, argv[1:]))
    return 1 if docker and code not in (0, 1) else code


def _pusher(args, hc):
    """The AMQPPusher that the push arguments describe; ValueError names a bad option."""
    urls = _amqp_urls(args.url, os.environ.get("PIHACE_AMQP_PASSWORD"))
    if args.interval is not None:
        _seconds("--interval", args.interval)
    queue_arguments = dict(map(_queue_argument, args.queue_arg))
    try:
        return AMQPPusher(hc, urls, args.queue, exchange=args.exchange,
                          routing_key=args.routing_key, buffer_size=args.buffer_size,
                          declare=args.declare, queue_arguments=queue_arguments,
                          outbox_path=args.spool, max_connection_age=args.max_connection_age)
    except OSError as exc:  # the spool folder
        raise ValueError(f"--spool: {describe_error(exc)}") from None
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc).replace("amqp_url", "--url")) from None


def _queue_argument(spec):
    """(key, value) from --queue-arg KEY=VALUE: a whole number as an int, true/false as a bool."""
    key, equals, value = spec.partition("=")
    if not key or not equals:
        raise ValueError(f"--queue-arg: expected KEY=VALUE, got {_printable(repr(spec))}")
    if value.lstrip("-").isdigit():
        return key, int(value)
    return key, {"true": True, "false": False}.get(value, value)


def _push(pusher):
    """pihace push: one report; exit code 0 when the broker confirmed it, else 2."""
    with pusher:
        result = pusher.push()
        kept = len(pusher.outbox) if pusher.outbox.path else 0
    if result is not True:
        print(f"pihace: not delivered: {_printable(result[1])}", file=sys.stderr)
    if kept:
        print(f"pihace: {kept} report(s) kept in {pusher.outbox.path} for the next run",
              file=sys.stderr)
    return 0 if result is True else 2


def _push_until_signalled(pusher, interval):
    """pihace push --interval: push until SIGTERM or Ctrl-C, then close cleanly."""
    import signal  # here, not at the top: only the command line's push loop needs it

    def stop(*_):  # SIGTERM or a first Ctrl-C: end the round, then close cleanly
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second one interrupts
        pusher.stop()

    signals = (signal.SIGTERM, signal.SIGINT)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = [signal.signal(number, stop) for number in signals] if in_main_thread else []
    try:
        pusher.push_forever_in_loop(interval)
    finally:
        for number, previous_handler in zip(signals, previous):
            signal.signal(number, previous_handler)
    return 0


def _watcher(args):
    """The Watcher that the watch arguments describe; ValueError names a bad option."""
    try:
        urls = _amqp_urls(args.url, os.environ.get("PIHACE_AMQP_PASSWORD"))
    except ValueError:
        raise ValueError("watch needs --url or PIHACE_AMQP_URL") from None
    _seconds("--wait", args.wait)
    _seconds("--hook-timeout", args.hook_timeout)
    try:
        return Watcher(urls, args.queue, exchange=args.exchange,
                       exchange_type=args.exchange_type, binding_key=args.binding_key,
                       default_interval=args.interval, grace=args.grace,
                       silent_grace=args.silent_grace, silent_limit=args.silent_after,
                       tick=0.5 if args.once else 1.0)
    except (TypeError, ValueError) as exc:
        name, space, rest = str(exc).partition(" ")  # "grace must be ...": the option's name
        options = {"amqp_url": "--url", "default_interval": "--interval", "grace": "--grace",
                   "silent_limit": "--silent-after", "silent_grace": "--silent-grace",
                   "queue_name": "--queue"}
        raise ValueError(options.get(name, name) + space + rest) from None


def _watch(parser, args):
    """pihace watch: --once, or follow the fleet until SIGTERM or Ctrl-C."""
    try:
        watcher = _watcher(args)
        hooks = _Hooks(args.on_change, args.hook_timeout) if args.on_change else None
        server = _serve_fleet(watcher, args.listen) if args.listen and not args.once else None
    except ValueError as exc:
        parser.error(str(exc))
    if args.once:
        return _watch_once(watcher, args.wait, args.format)
    if hooks is not None:
        watcher.on_change.append(hooks)
    live = sys.stdout.isatty()
    if not live:
        watcher.on_change.append(_print_change)
    try:
        return _watch_until_signalled(watcher, _live_table if live else None)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        if hooks is not None:
            hooks.close()


def _watch_once(watcher, wait, output):
    """--once: read what is waiting (at most `wait` seconds), print the fleet, exit 0, 1, 2,
    or 3 when nothing could be read."""
    if not watcher.run(duration=wait, idle=0.5):
        print(f"pihace: could not read the reports: {watcher.last_error or 'timed out'}",
              file=sys.stderr)
        return 3
    devices = watcher.devices
    print(format_fleet(devices, output), end="" if output == "prometheus" else "\n")
    return fleet_exit_code(devices)


def _watch_until_signalled(watcher, show=None):
    """Run the watcher in a thread until SIGTERM or Ctrl-C; show(watcher) once a second."""
    import signal  # here, not at the top: only the command line's loops need it

    thread = threading.Thread(target=watcher.run, name="pihace-watch", daemon=True)
    signals = (signal.SIGTERM, signal.SIGINT)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = [signal.signal(number, lambda *_: watcher.stop()) for number in signals] \
        if in_main_thread else []
    thread.start()
    try:
        while thread.is_alive():
            if show is not None:
                show(watcher)
            thread.join(1.0)
    finally:
        for number, previous_handler in zip(signals, previous):
            signal.signal(number, previous_handler)
        watcher.stop()
        thread.join(10)
        if show is not None:
            sys.stdout.write("\x1b[?25h")  # the cursor back
            sys.stdout.flush()
    return 0


def _print_change(device, old, new, report):
    """One line per change, for a pipe or a log: text from outside escaped."""
    failing = f" failing: {_printable(', '.join(device['failing']))}" if (
        report is not None and device["failing"]) else ""
    print(f"{get_utc_timestamp()[:19]}Z {_printable(device['device'])} {old or '-'} -> {new}"
          f"{failing}", flush=True)


def _age(seconds):
    seconds = int(seconds)
    return f"{seconds}s" if seconds < 120 else f"{seconds // 60}m" if seconds < 7200 else \
        f"{seconds // 3600}h"


def fleet_table(devices, width=80, height=24):
    """The live table's text: a summary line, then one line per device, worst first, each
    cut to `width` columns; as many devices as fit in `height` lines."""
    rows = _worst_first(devices)
    summary = ", ".join(f"{n} {state}" for state, n in _state_counts(devices).items() if n)
    name_width = min(40, max([6] + [len(_printable(d["device"])) for d in rows]))
    lines = [f"pihace watch: {len(rows)} devices{': ' if summary else ''}{summary}   "
             f"{get_utc_timestamp()[:19]}Z",
             f"{'DEVICE':<{name_width}}  {'STATE':<8}  {'LAST SEEN':<9}  {'AGE':>5}  "
             f"{'RATE':<7}  FAILING"]
    room = max(1, height - 3)
    for device in rows[:room if len(rows) <= room else room - 1]:
        name = _printable(device["device"])
        if len(name) > name_width:
            name = name[:name_width - 1] + "~"
        seen = time.strftime("%H:%M:%S", time.gmtime(device["last_seen"]))
        lines.append(f"{name:<{name_width}}  {device['state']:<8}  {seen:<9}  "
                     f"{_age(device['age']):>5}  {_printable(device['rate'] or '-'):<7}  "
                     f"{_printable(', '.join(device['failing']))}")
    if len(rows) > room:
        lines.append(f"... and {len(rows) - room + 1} more")
    return "\n".join(line[:width] for line in lines)


def _live_table(watcher):
    """Redraw the table in place: cursor home, the table, clear what is left below."""
    import shutil  # here, not at the top: slow to import (see the imports)

    size = shutil.get_terminal_size()
    table = fleet_table(watcher.devices, size.columns, size.lines)
    sys.stdout.write("\x1b[?25l\x1b[H" + table.replace("\n", "\x1b[K\n") + "\x1b[K\x1b[J")
    sys.stdout.flush()


class _Hooks:
    """--on-change: runs a command per change, with bounded concurrency and a timeout;
    the watcher only queues (a full queue drops the change, counted and logged)."""

    def __init__(self, command, timeout, workers=4, backlog=1000):
        import shlex  # here, not at the top: only --on-change needs it

        self.command, self.timeout = shlex.split(command), timeout
        if not self.command:
            raise ValueError("--on-change needs a command")
        self.dropped = 0
        self._queue = queue.Queue(backlog)
        self._threads = [threading.Thread(target=self._work, daemon=True, name="pihace-hook")
                         for _ in range(workers)]
        for thread in self._threads:
            thread.start()

    def __call__(self, device, old, new, report):
        import json  # here, not at the top: slow to import (see the imports)

        env = dict(os.environ, PIHACE_DEVICE=_printable(device["device"]),
                   PIHACE_NAME=_printable(device["name"]), PIHACE_HOST=_printable(device["host"]),
                   PIHACE_OLD_STATE=old or "", PIHACE_NEW_STATE=new,
                   PIHACE_REPORT=json.dumps(report) if report is not None else "")
        try:
            self._queue.put_nowait(env)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                log.warning("--on-change is too slow: dropped %d change(s) so far", self.dropped)

    def _work(self):
        import subprocess  # here, not at the top: only --on-change needs it

        while True:
            env = self._queue.get()
            if env is None:
                return
            try:
                result = subprocess.run(self.command, env=env, timeout=self.timeout,
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
                if result.returncode:
                    log.warning("--on-change exited with %d for %s", result.returncode,
                                env["PIHACE_DEVICE"])
            except subprocess.TimeoutExpired:
                log.warning("--on-change ran past %gs for %s: killed", self.timeout,
                            env["PIHACE_DEVICE"])
            except OSError as exc:
                log.warning("--on-change cannot run: %s", describe_error(exc))

    def close(self, timeout=5.0):
        """Let the queued commands finish (each within its timeout), at most `timeout`
        seconds more; then stop the workers."""
        for _ in self._threads:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))


class _FleetPages:
    """What `pihace watch --listen` answers, on the HTTP server's hardened classes (the
    same limits on slow and malformed requests as HealthServer)."""

    request_timeout = max_wait = 10.0

    def __init__(self, watcher):
        self.watcher = watcher

    def respond(self, path, query, accept):
        if path == "/metrics":
            return (200, _PROMETHEUS_TEXT,
                    format_fleet(self.watcher.devices, "prometheus").encode(), [])
        if path in ("/", "/devices"):
            return 200, "application/json", format_fleet(self.watcher.devices, "json").encode(), []
        return 404, _TEXT_PLAIN, b"not found: try /metrics or /devices\n", []


def _serve_fleet(watcher, listen):
    """--listen HOST:PORT: /metrics (Prometheus) and /devices (JSON) in a thread."""
    host, port = _listen_address(listen)
    try:
        server = _http_classes()[0]((host, port), _FleetPages(watcher))
    except OSError as exc:
        raise ValueError(f"--listen {_printable(listen)}: {describe_error(exc)}") from None
    threading.Thread(target=server.serve_forever, daemon=True, name="pihace-listen").start()
    log.warning("serving the fleet on http://%s:%d/metrics and /devices",
                listen.rpartition(":")[0], server.server_address[1])
    return server


def _run_config(loaded):
    """pihace --config FILE: start its providers, pushers and storages (each in a thread, as
    pihace 1.0.0 did) and run until SIGTERM or Ctrl-C; then stop the loops cleanly."""
    import signal  # here, not at the top: only the command line's loops need it

    config, stop, threads, failed = loaded["config"], threading.Event(), [], []

    def start(target, what, *args, **kwargs):
        def run():  # a provider that cannot listen, say: one line, and the run ends
            try:
                target(*args, **kwargs)
            except Exception as exc:
                log.error("%s stopped: %s", what, describe_error(exc))
                failed.append(what)
                stop.set()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append(thread)

    for entry, provider in zip(config.get("providers") or [], loaded["providers"]):
        start(getattr(provider, "serve", None) or provider.start, f"provider {entry['type']}")
    loops = [(pusher, pusher.push_forever_in_loop, f"pusher {entry['type']}",
              _loop_interval("pushers", entry))
             for entry, pusher in zip(config.get("pushers") or [], loaded["pushers"])]
    loops += [(storage, storage.run_forever_in_loop, f"storage {entry['type']}",
               _loop_interval("storages", entry))
              for entry, storage in zip(config.get("storages") or [], loaded["storages"])]
    for _, loop, what, interval in loops:
        start(loop, what, interval=interval, stop_event=stop)
    in_main_thread = threading.current_thread() is threading.main_thread()
    signals = (signal.SIGTERM, signal.SIGINT) if in_main_thread else ()
    previous = [signal.signal(number, lambda *_: stop.set()) for number in signals]
    try:
        stop.wait()
    finally:
        for number, handler in zip(signals, previous):
            signal.signal(number, handler)
        for runner, _, _, _ in loops:
            runner.stop()
        for provider in loaded["providers"]:
            for name in ("shutdown", "stop", "close"):
                if callable(getattr(provider, name, None)):
                    threading.Thread(target=getattr(provider, name), daemon=True).start()
                    break
        deadline = time.monotonic() + 10  # the pushers' last chance for their outboxes
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
    return 1 if failed else 0


def main(argv=None):
    """The ``pihace`` command: ``check`` (the default), ``push``, ``serve`` or ``watch``;
    returns the exit code."""
    import logging  # here, not at the top: slow to import (see the imports)

    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version") \
            and argv[0].partition("=")[0] != "--config":
        argv.insert(0, "check")
    handler, previous_level = logging.StreamHandler(), log.level
    handler.setFormatter(logging.Formatter("%(asctime)s pihace %(levelname)s: %(message)s"))
    try:
        args = parser.parse_args(argv)
        if args.config is not None:
            log.addHandler(handler)
            log.setLevel("INFO")
            try:
                loaded = load_healthcheck_from_yaml(args.config)
            except (OSError, ValueError) as exc:
                parser.error(f"--config: {describe_error(exc)}")
            return _run_config(loaded)
        looping = args.command == "push" and args.interval is not None
        log.addHandler(handler)
        log.setLevel(args.log_level or ("INFO" if looping else "WARNING"))
        if args.command == "watch":
            return _watch(parser, args)
        try:
            hc = _health_check(args)
            pusher = _pusher(args, hc) if args.command == "push" else None
        except ValueError as exc:
            parser.error(str(exc))
        if args.command == "serve":
            return _serve(args, hc)
        if pusher is None:
            return _check(args, hc)
        return _push_until_signalled(pusher, args.interval) if looping else _push(pusher)
    except SystemExit as exc:  # from argparse: --help and --version (0), or an error (3)
        return _exit_code(argv, exc.code if isinstance(exc.code, int) else 3)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        log.debug("internal error", exc_info=True)
        print(f"pihace: internal error: {describe_error(exc)}", file=sys.stderr)
        return _exit_code(argv, 3)
    finally:
        log.removeHandler(handler)
        log.setLevel(previous_level)


if __name__ == "__main__":
    sys.exit(main())
