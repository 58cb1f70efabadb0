"""health checks: HealthCheck (registering checkers, running them with timeouts and retries), the
report and its status."""

from __future__ import annotations

import collections.abc
import contextvars
import functools
import math
import os
import queue
import threading
import time
from datetime import datetime  # pihace 1.0.0's pihace.utils.datetime: a patch of it is honoured

from .helpers import (
    _number, _printable, _reset_after_fork, _seconds, _text, _time_left, describe_error,
)
from .system import get_system_info
from .formats import (
    _AVAILABLE, _PARTIALLY_AVAILABLE, _UNAVAILABLE, format_health_json, format_nagios,
    format_prometheus,
)


_DATETIME = datetime  # the real class, to tell a patched `datetime` (a test's) from it


def get_utc_timestamp(now=None):
    """`now` (default: the current time.time()) as ISO 8601 UTC ending in Z, in pihace
    1.0.0's format (``datetime.utcnow().isoformat() + "Z"``): ``2026-05-01T12:34:56.789123Z``,
    without the fraction when it is zero (``2026-05-01T12:34:56Z``). A test that patches
    ``pihace.utils.datetime`` gets its utcnow(), as with pihace 1.0.0."""
    if now is None and datetime is not _DATETIME:  # patched: mock.patch, freezegun
        return datetime.utcnow().isoformat() + "Z"
    now = time.time() if now is None else now
    seconds = int(now)
    micro = int((now - seconds) * 1e6)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + (
        ".%06dZ" % micro if micro else "Z")


def calculate_status(passed, total):
    """"Available" when all passed (or there is nothing to check), "Unavailable"
    when none did, else "Partially Available"."""
    return _AVAILABLE if passed == total else _UNAVAILABLE if passed == 0 else _PARTIALLY_AVAILABLE


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

    __slots__ = ("_outcome", "_callbacks", "_lock", "ended")

    def __init__(self):
        self._outcome = None  # (value, exception), once done
        self.ended = None  # time.monotonic() when it ended
        self._callbacks = []
        self._lock = threading.Lock()

    def done(self):
        return self._outcome is not None

    def finish(self, value, exception):
        self.ended = time.monotonic()
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


class _Checker(dict):
    """A registered checker, and its latest run: a run that outlives its check()
    is waited for by the next check(), never started twice.

    It is pihace 1.0.0's ``hc.checkers[name]``, the dict ``{"checker": function,
    "timeout": seconds, "retries": count}`` (keys of the caller's own too); the
    three are checked when set. A copy, deep copy or pickle holds the settings,
    not the run.
    """

    __slots__ = ("name", "run", "started", "lock", "_run_of", "_async_of")
    _KEYS = ("checker", "timeout", "retries")

    def __init__(self, name, function, timeout, retries, extra=()):
        super().__init__(checker=function, timeout=timeout, retries=retries)
        dict.update(self, {key: value for key, value in dict(extra).items()
                           if key not in self._KEYS})
        self.name = name
        self.run, self.started, self._run_of = None, 0.0, None
        self._async_of = (None, False)  # (function, is it async?), worked out once
        self.lock = threading.Lock()  # check() from two threads at once: still one run

    def __reduce__(self):  # copy, deepcopy, pickle: the settings, without run or lock
        return _new_checker, (self.name, self.function, self.timeout, self.retries, dict(self))

    def __setitem__(self, key, value):
        if key == "checker" and not callable(value):
            raise ValueError(f"checker {self.name!r} must be callable, got "
                             f"{type(value).__name__}")
        if key == "timeout":
            _timeout(f"timeout of checker {self.name!r}", value)
        elif key == "retries":
            _number(f"retries of checker {self.name!r}", value, lambda v: v >= 0,
                    "an integer >= 0", int)
        super().__setitem__(key, value)

    def __delitem__(self, key):
        if key in self._KEYS:
            raise TypeError("a checker keeps its settings; remove the checker with "
                            "hc.checkers.pop(name)")
        super().__delitem__(key)

    # the settings as attributes (what a dict written with update() holds, as it is now)
    function = property(lambda self: self.get("checker"))
    timeout = property(lambda self: self.get("timeout"),
                       lambda self, value: self.__setitem__("timeout", value))
    retries = property(lambda self: self.get("retries"),
                       lambda self, value: self.__setitem__("retries", value))

    @property
    def is_async(self):
        function = self.function
        if self._async_of[0] is not function:
            self._async_of = (function, _is_async_callable(function))
        return self._async_of[1]

    def start(self, now, loop=None):
        """The Future of this checker's run: the one still going, else a new one.

        It runs in a copy of the caller's context (contextvars: a Flask app
        context, say); an async checker runs on `loop`, the caller's running
        loop, when one is given (its run is cancelled at its timeout, so it is
        never waited for by a later check), else on pihace's own loop. A run of
        a function that was replaced since is not this checker's any more.
        """
        function, is_async = self.function, self.is_async
        if loop is not None and is_async:
            self.started = now
            return loop.create_task(_awaited_call(function))  # the task copies the context
        with self.lock:
            if self.run is None or self.run.done() or self._run_of is not function:
                self.started, self._run_of = now, function
                # call_soon_threadsafe, inside run_coroutine_threadsafe, copies the context
                self.run = (_run_async(_awaited_call(function)) if is_async
                            else _workers.submit(functools.partial(
                                contextvars.copy_context().run, _call_checker, function)))
            return self.run


def _new_checker(name, function, timeout, retries, extra=()):
    """A _Checker from register()'s arguments, each checked; ValueError names a bad one.
    `extra`: the other keys of a dict set whole (or copied)."""
    if not callable(function):
        raise ValueError(f"checker {name!r} must be callable, got {type(function).__name__}")
    timeout = _timeout(f"timeout of checker {name!r}", timeout)
    _number(f"retries of checker {name!r}", retries, lambda v: v >= 0, "an integer >= 0", int)
    return _Checker(str(name), function, timeout, retries, extra)


class _Attempts:
    """One checker's attempts during one check(); `outcome` is its entry in the report."""

    __slots__ = ("checker", "wake", "run", "count", "deadline", "outcome", "loop")

    def __init__(self, checker, wake, now, loop=None):
        self.checker, self.wake, self.count, self.loop = checker, wake, 0, loop
        self.attempt(now, new_run=True)

    def attempt(self, now, new_run):
        """Another attempt: a new run, or more time for the one that timed out (a hung
        checker is never started twice); either way, an answer must come within
        `timeout` of the run's start to count, as in pihace 1.0.0."""
        self.count += 1
        self.deadline = now + (math.inf if self.checker.timeout is None else self.checker.timeout)
        if new_run:
            self.run = self.checker.start(now, self.loop)
            self.run.add_done_callback(self.wake)  # wake(run) when it ends

    def advance(self, now, began):
        """Settle the outcome, or start the next attempt after a failed one; True once
        settled (passed, or failed with no retry left)."""
        checker, run, done = self.checker, self.run, self.run.done()
        took = (getattr(run, "ended", None) or now) - checker.started
        if done and checker.timeout is not None and took > checker.timeout:
            passed, message = False, f"timed out after {checker.timeout:g}s (it answered " \
                f"after {took:.1f}s)"  # too late for this attempt, as in pihace 1.0.0
        elif done:
            try:
                passed, message = _interpret(run.result())
            except KeyboardInterrupt:  # a Ctrl-C that came as the result was read: a stop
                raise
            except BaseException as exc:  # the checker's own (its sys.exit(), say)
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
    return None if deadline == math.inf else _time_left(deadline)


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

    def __getstate__(self):  # copy.deepcopy, pickle: the settings, not the lock
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()
        _reset_after_fork.add(self)

    def _overrides(self, name):
        """Does a subclass override pihace 1.0.0's method `name` (its code is then called)?"""
        return getattr(type(self), name) is not getattr(HealthCheck, name)

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
                                                   entry.get("timeout", 5), entry.get("retries", 2),
                                                   entry)
            return list(self.checkers.values())

    def _run_checkers(self):
        """[(name, its entry in the report)] for every checker, run at once."""
        if self._overrides("run_checker_with_retries"):
            return _run_to_end(self._run_checkers_async())
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
        if self._overrides("run_checker_with_retries"):  # a subclass's, as pihace 1.0.0 ran it
            began = time.monotonic()
            results = await asyncio.gather(*(self.run_checker_with_retries(
                checker.name, checker.function, checker.retries, checker.timeout)
                for checker in checkers))
            duration_ms = round((time.monotonic() - began) * 1000, 3)
            return [(checker.name, {"status": "pass" if passed else "fail",
                                    "duration_ms": duration_ms, "attempts": None,
                                    "message": message})
                    for checker, (passed, message) in zip(checkers, map(_interpret, results))]
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
        if self._overrides("_check_async"):  # a subclass's, run as pihace 1.0.0's check() ran it
            return _run_to_end(self._check_async(output, pretty))
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


def _run_to_end(coroutine):
    """What `coroutine` returns, as asyncio.run() gives it (pihace 1.0.0's check()); inside a
    running event loop, asyncio.run() goes to a thread of its own (it cannot nest)."""
    import asyncio  # here, not at the top: slow to import, and only subclasses need it

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    ended = threading.Event()
    run = _workers.submit(functools.partial(contextvars.copy_context().run, asyncio.run,
                                            coroutine))
    run.add_done_callback(lambda _run: ended.set())
    ended.wait()
    return run.result()


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
