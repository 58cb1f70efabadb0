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

import functools
import json
import logging
import os
import queue
import shutil
import sys
import threading
import time
from concurrent.futures import Future

try:
    import psutil
except ImportError:  # psutil is optional: the standard library covers Linux
    psutil = None

__version__ = "1.1.0"
__all__ = [
    "AMQPPusher",
    "HealthCheck",
    "PihaceError",
    "SystemInfo",
    "calculate_status",
    "format_rate",
    "get_system_info",
    "get_utc_timestamp",
    "main",
]

log = logging.getLogger("pihace")


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------

class PihaceError(Exception):
    """Root of every error pihace raises on purpose."""


# ---------------------------------------------------------------------------
# system information
# ---------------------------------------------------------------------------

def _read_proc_cpu_times():
    """(busy, total) jiffies from the first line of /proc/stat."""
    with open("/proc/stat", "rb") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice;
    # guest time is already counted in user and nice.
    fields += [0] * (10 - len(fields))
    total = sum(fields[:8])
    return total - fields[3] - fields[4], total


def _read_proc_meminfo():
    """(percent used, bytes available) from /proc/meminfo."""
    values = {}
    with open("/proc/meminfo", "rb") as meminfo:
        for line in meminfo:
            key, _, rest = line.partition(b":")
            values[key] = int(rest.split()[0]) * 1024
    total, available = values[b"MemTotal"], values[b"MemAvailable"]
    return round((total - available) / total * 100, 1), available


class SystemInfo:
    """Resource figures and platform facts, without ever blocking.

    CPU usage is the share of busy time since the previous sample (since boot
    for the first one), so a report never waits to measure it. Figures come
    from psutil when it is given, else from /proc where the OS has it; a figure
    that cannot be measured is None.
    """

    def __init__(self, psutil_module=psutil, disk_path=None):
        self.psutil = psutil_module
        self.disk_path = disk_path or os.path.abspath(os.sep)
        self._lock = threading.Lock()
        self._last_cpu = (0, 0)
        self._last_percent = None

    def _cpu_times(self):
        if self.psutil is not None:
            times = self.psutil.cpu_times()
            guest = getattr(times, "guest", 0) + getattr(times, "guest_nice", 0)
            total = sum(times) - guest
            return total - times.idle - getattr(times, "iowait", 0), total
        return _read_proc_cpu_times()

    def cpu_percent(self):
        try:
            busy, total = self._cpu_times()
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
            return _read_proc_meminfo()
        except (OSError, ValueError, KeyError, IndexError, ZeroDivisionError):
            return None, None

    def disk(self):
        """(percent used, bytes free) of the disk holding disk_path, or (None, None)."""
        try:
            usage = shutil.disk_usage(self.disk_path)
            return round(usage.used / (usage.used + usage.free) * 100, 1), usage.free
        except (OSError, ZeroDivisionError):
            return None, None

    def read(self):
        """The `system` part of a report, with pihace 1.0.0's keys and formats."""
        memory_percent, memory_available = self.memory()
        disk_percent, disk_free = self.disk()
        cpu = self.cpu_percent()
        import platform  # here, not at the top: only reports with system figures need it
        return {
            "cpu_usage": None if cpu is None else f"{cpu}%",
            "memory_usage": None if memory_percent is None else f"{memory_percent}%",
            "memory_available": None if memory_available is None
            else f"{round(memory_available / 1024 ** 2, 2)} MB",
            "disk_usage": None if disk_percent is None else f"{disk_percent}%",
            "disk_available": None if disk_free is None else f"{round(disk_free / 1024 ** 3, 2)} GB",
            "os": platform.system() or None,
            "os_version": platform.version() or None,
            "python_version": f"{sys.version_info[0]}.{sys.version_info[1]}",
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
    if passed == total:
        return "Available"
    if passed == 0:
        return "Unavailable"
    return "Partially Available"


def format_rate(passed, total):
    return f"{passed}/{total}"


_REASON_LIMIT = 2000  # characters of a checker's message kept in the report


def _text(value):
    """Any checker message as a JSON-safe string of bounded length."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    elif not isinstance(value, str):
        try:
            value = str(value)
        except Exception:
            value = f"<{type(value).__name__} that cannot be shown>"
    if len(value) > _REASON_LIMIT:
        value = f"{value[:_REASON_LIMIT]}... ({len(value) - _REASON_LIMIT} more characters)"
    return value


def _describe_exception(exc):
    message = _text(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


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


_CO_COROUTINE = 0x80  # inspect.CO_COROUTINE; inspect itself is slow to import


def _is_async_callable(checker):
    """Is `checker` an async def function, or an object whose __call__ is one?"""
    while isinstance(checker, functools.partial):
        checker = checker.func
    code = getattr(checker, "__code__", None)
    if code is None:
        code = getattr(getattr(type(checker), "__call__", None), "__code__", None)
    return code is not None and bool(code.co_flags & _CO_COROUTINE)


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
        future = Future()
        with self._lock:
            reuse = self._idle > 0
            if reuse:
                self._idle -= 1
        if reuse:
            self._tasks.put((function, future))
        else:
            threading.Thread(target=self._work, args=(function, future),
                             name="pihace-check", daemon=True).start()
        return future

    def _work(self, function, future):
        while True:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(function())
                except BaseException as exc:  # a checker's sys.exit() is a failure too
                    future.set_exception(exc)
            del function, future
            with self._lock:
                self._idle += 1
            while True:
                try:
                    function, future = self._tasks.get(timeout=self.IDLE_SECONDS)
                    break
                except queue.Empty:
                    with self._lock:
                        if self._idle > 0:  # nobody promised us a task: retire
                            self._idle -= 1
                            return


class _AsyncRunner:
    """One event loop in a daemon thread, where async checkers run."""

    def __init__(self):
        self._lock = threading.Lock()
        self._loop = None

    def submit(self, coroutine):
        import asyncio  # here, not at the top: it is slow to import and rarely needed

        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=self._loop.run_forever, name="pihace-async",
                                 daemon=True).start()
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)


_workers = _Workers()
_async_runner = _AsyncRunner()


def _call_checker(checker):
    """Run a sync checker in a worker thread; a returned awaitable is awaited."""
    result = checker()
    if hasattr(result, "__await__"):
        result = _async_runner.submit(_awaited(result)).result()
    return result


async def _awaited(awaitable):
    return await awaitable


class _Checker:
    __slots__ = ("name", "function", "timeout", "retries", "is_async", "running", "started")

    def __init__(self, name, function, timeout, retries):
        self.name, self.function = name, function
        self.timeout, self.retries = timeout, retries
        self.is_async = _is_async_callable(function)
        self.running = None  # Future of the run in progress, kept across check() calls
        self.started = 0.0

    def start(self, now):
        """The Future of this checker's run: the one still going, else a new one."""
        if self.running is None or self.running.done():
            self.started = now
            if self.is_async:
                try:
                    self.running = _async_runner.submit(_awaited(self.function()))
                except Exception as exc:  # the call that makes the coroutine failed
                    self.running = Future()
                    self.running.set_exception(exc)
            else:
                self.running = _workers.submit(lambda: _call_checker(self.function))
        return self.running


class _Attempts:
    """The state of one checker during one check(): attempts, deadline, outcome."""

    __slots__ = ("checker", "wake", "future", "attempts", "deadline", "began", "passed",
                 "message", "elapsed")

    def __init__(self, checker, wake, now):
        self.checker = checker
        self.wake = wake  # called with the future when a run ends
        self.began = now
        self.attempts = 0
        self.passed = None
        self.message = None
        self.elapsed = 0.0
        self.next_attempt(now)

    def next_attempt(self, now):
        self.attempts += 1
        self.deadline = now + self.checker.timeout
        self.future = self.checker.start(now)
        self.future.add_done_callback(self.wake)

    def finish(self, passed, message, now):
        self.passed, self.message, self.elapsed = passed, message, now - self.began

    def on_done(self, now):
        """The run ended: pass, or fail and maybe try again."""
        try:
            passed, message = _interpret(self.future.result(0))
        except BaseException as exc:
            passed, message = False, _describe_exception(exc)
        if passed or self.attempts > self.checker.retries:
            self.finish(passed, message, now)
        else:
            self.next_attempt(now)

    def on_timeout(self, now):
        """The attempt ran out of time; a retry waits for the same run."""
        if self.attempts > self.checker.retries:
            timeout = self.checker.timeout
            ran_for = now - self.checker.started
            message = f"timed out after {timeout:g}s"
            if ran_for > timeout * self.attempts + 0.5:
                message += f" (still running since an earlier check, {ran_for:.0f}s ago)"
            self.finish(False, message, now)
            if self.checker.is_async:
                self.future.cancel()
        else:
            self.attempts += 1
            self.deadline = now + self.checker.timeout


class HealthCheck:
    """Registered checkers, and the report of one run of all of them.

    A checker is a callable (sync or async) that passes by returning True or
    (True, detail) and fails by returning False or (False, reason), by raising,
    or by running past its timeout. It is tried at most 1 + retries times, each
    attempt bounded by timeout, so one check takes at most
    timeout * (1 + retries) seconds. All checkers run at once; a checker still
    running from an earlier report is waited for, never started twice.
    """

    def __init__(self, with_system=False, name=None, version=None, *, system_info=None):
        self.with_system = with_system
        self.component_name = name
        self.component_version = version
        self.system_info = system_info or _system_info
        self.checkers = {}
        self._lock = threading.Lock()

    def register(self, name, checker, timeout=5, retries=2):
        """Add (or replace) the checker called `name`."""
        if not callable(checker):
            raise ValueError(f"checker {name!r} must be callable, got {type(checker).__name__}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout of checker {name!r} must be a positive number of seconds, "
                             f"got {timeout!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries of checker {name!r} must be an integer >= 0, got {retries!r}")
        with self._lock:
            self.checkers[name] = _Checker(str(name), checker, float(timeout), retries)

    def _run_checkers(self):
        with self._lock:
            checkers = list(self.checkers.values())
        # Futures report their end on this queue: waiting on it is much
        # cheaper than concurrent.futures.wait(), which matters for fast checkers.
        ended = queue.SimpleQueue()
        now = time.monotonic()
        results = [_Attempts(checker, ended.put, now) for checker in checkers]
        pending = results
        while pending:
            now = time.monotonic()
            still_pending = []
            for attempt in pending:
                if attempt.future.done():
                    attempt.on_done(now)
                elif now >= attempt.deadline:
                    attempt.on_timeout(now)
                if attempt.passed is None:
                    still_pending.append(attempt)
            pending = still_pending
            if pending:
                wait_for = min(attempt.deadline for attempt in pending) - time.monotonic()
                try:
                    ended.get(timeout=max(0.0, wait_for))
                except queue.Empty:
                    pass
        return results

    def report(self):
        """Run every checker and return the report as a dict."""
        start = time.perf_counter()
        results = self._run_checkers()
        passed = sum(1 for result in results if result.passed)
        failures = {result.checker.name: result.message for result in results if not result.passed}
        report = {
            "status": calculate_status(passed, len(results)),
            "timestamp": get_utc_timestamp(),
            "failure": failures or None,
            "rate": format_rate(passed, len(results)),
            "duration": 0.0,
            "system": self.system_info.read() if self.with_system else None,
            "component": {"name": self.component_name, "version": self.component_version}
            if self.component_name and self.component_version else None,
            "checks": {
                result.checker.name: {
                    "status": "pass" if result.passed else "fail",
                    "duration_ms": round(result.elapsed * 1000, 3),
                    "attempts": result.attempts,
                    "message": result.message,
                } for result in results
            },
        }
        report["duration"] = time.perf_counter() - start
        return report

    def check(self, output="dict", pretty=True):
        """Run every checker; return the report as "dict", "json" or "str".

        Callable from any thread, and from inside a running event loop (which
        it blocks for the duration: prefer ``await check_async()`` there).
        """
        if output not in ("dict", "json", "str"):
            raise ValueError(f'output must be "dict", "json" or "str", got {output!r}')
        return format_report(self.report(), output, pretty)

    async def check_async(self, output="dict", pretty=True):
        """check() for async code: the checks run without blocking the event loop."""
        if output not in ("dict", "json", "str"):
            raise ValueError(f'output must be "dict", "json" or "str", got {output!r}')
        import asyncio

        report = await asyncio.get_running_loop().run_in_executor(None, self.report)
        return format_report(report, output, pretty)


def format_report(report, output="dict", pretty=True):
    """A report dict as itself, JSON, or pihace 1.0.0's lines of text."""
    if output == "dict":
        return report
    if output == "json":
        return json.dumps(report, indent=4 if pretty else None)
    lines = [f"Status: {report['status']} ({report['rate']} healthy)",
             f"Timestamp: {report['timestamp']}"]
    if report["failure"]:
        lines.append("Failures:")
        lines.extend(f" - {name}: {reason}" for name, reason in report["failure"].items())
    if report["component"]:
        lines.append(f"Component: {report['component']['name']} {report['component']['version']}")
    system = report["system"]
    if system:
        lines.append(
            f"System: CPU {system['cpu_usage']}, Mem {system['memory_usage']}, "
            f"Disk {system['disk_usage']}, Free Mem: {system['memory_available']}, "
            f"Python {system['python_version']}, OS: {system['os']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# pusher
# ---------------------------------------------------------------------------

class AMQPPusher:
    """Placeholder until the AMQP pusher lands."""

    def __init__(self, healthcheck, amqp_url, queue_name="pihace.healthcheck"):
        raise NotImplementedError("AMQPPusher is not implemented yet")


# ---------------------------------------------------------------------------
# compatibility: pihace 1.0.0's module names point at this one file
# ---------------------------------------------------------------------------

def _register_aliases():
    module = sys.modules[__name__]
    sys.modules.setdefault("pihace", module)
    for alias in ("healthcheck", "pusher", "pusher.messaging", "system_info", "utils"):
        sys.modules.setdefault(f"pihace.{alias}", module)
    # ``import pihace.pusher.messaging`` then reaches attributes of the parent
    for attribute in ("healthcheck", "pusher", "messaging", "system_info", "utils"):
        setattr(module, attribute, module)


_register_aliases()


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------

def main(argv=None):
    """Print this machine's health report as JSON; the exit code follows the status."""
    report = HealthCheck(with_system=True).check("dict")
    print(json.dumps(report, indent=4))
    return {"Available": 0, "Partially Available": 1}.get(report["status"], 2)


if __name__ == "__main__":
    sys.exit(main())
