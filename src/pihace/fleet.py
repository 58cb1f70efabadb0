"""fleet views: the watcher's devices as JSON, Nagios and Prometheus text, the live table, the
--on-change hooks and the pages of `pihace watch --listen` (rendered once a second at most,
whatever the number of requests)."""

from __future__ import annotations

import collections
import contextlib
import itertools
import math
import os
import queue
import select
import sys
import threading
import time
import weakref

from .header import log
from .helpers import _printable, _seconds, _time_left, describe_error
from .formats import _prometheus_label_value
from .checks import get_utc_timestamp
from .devices import _STATE_RANK, _UPTIME_WINDOWS, DEVICE_STATES, _metric_labels, _plain_labels
from .server import _PROMETHEUS_TEXT, _TEXT_PLAIN
from .page import _page_answer


# -- the fleet's state, as text -------------------------------------------------

_EXIT_CODE_OF_STATE = {"down": 2, "silent": 2, "missing": 2, "degraded": 1, "late": 1}
_NAGIOS_WORDS = ("OK", "WARNING", "CRITICAL", "UNKNOWN")


def fleet_exit_code(devices):
    """0 when every device is up, 1 when some are degraded or late, 2 when some are down or
    silent: Nagios' OK, WARNING, CRITICAL."""
    return max([_EXIT_CODE_OF_STATE.get(device["state"], 0) for device in devices.values()],
               default=0)


def _worst_first(devices):
    return sorted(devices.values(), key=lambda d: (_STATE_RANK.get(d["state"], 0), -d["age"],
                                                   d["device"]))


def _state_counts(devices):
    counts = dict.fromkeys(DEVICE_STATES, 0)
    for device in devices.values():
        counts[device["state"]] = counts.get(device["state"], 0) + 1
    return counts


def _stale_note(status):
    """'' while the watcher sees; else what its outputs say about their staleness."""
    if status is None or status["connected"]:
        return ""
    since = time.strftime("%H:%M:%SZ", time.gmtime(status["since"])) if status["since"] else "?"
    return f"watcher disconnected since {since}, view stale: {_printable(status['reason'])}"


def format_fleet(devices, output="json", status=None):
    """The fleet (Watcher.devices) as "json", "nagios" (status line, perfdata, then one
    line per device not up) or "prometheus" (the text exposition format). `status`
    (Watcher.status) adds the watcher's own health: while it cannot see, each format says
    the view is stale."""
    if output == "json":
        import json  # here, not at the top: slow to import (see the imports)

        document = {"status": _NAGIOS_WORDS[fleet_exit_code(devices)],
                    "counts": _state_counts(devices), "devices": _worst_first(devices)}
        if status is not None:
            document["watcher"] = status
        return json.dumps(document, indent=2)
    if output == "nagios":
        return _fleet_nagios(devices, status)
    if output != "prometheus":
        raise ValueError(f'output must be "json", "nagios" or "prometheus", got {output!r}')
    return _fleet_prometheus(_metric_rows_of(devices), status)


def _fleet_nagios(devices, status):
    counts = _state_counts(devices)
    word = _NAGIOS_WORDS[fleet_exit_code(devices)]
    summary = ", ".join(f"{n} {state}" for state, n in counts.items() if n) or "no devices"
    stale = _stale_note(status)
    perfdata = " ".join(f"{state}={n};;;0" for state, n in counts.items())
    lines = [f"PIHACE FLEET {word} - {len(devices)} devices: {summary}"
             f"{' (' + stale.replace('|', '/') + ')' if stale else ''} | {perfdata}"]
    lines += [f"{_printable(d['device']).replace('|', '/')}: {d['state']}, last seen "
              f"{d['age']:.0f}s ago" + (f", failing: {_printable(', '.join(d['failing']))}"
                                        .replace("|", "/") if d["failing"] else "")
              for d in _worst_first(devices) if d["state"] != "up"]
    return "\n".join(lines)


def _metric_rows_of(devices):
    """Watcher.metric_rows() of a snapshot (Watcher.devices)."""
    snapshots = list(devices.values())
    keys = [f"{d['name']}\0{d['host']}" for d in snapshots]
    return (keys, [None if d["host"] and _plain_labels(d["name"], d["host"]) and
                   key.count("\0") == 1 else _metric_labels(d["device"], d["name"], d["host"])
                   for d, key in zip(snapshots, keys)],
            [d["state"] for d in snapshots], [d["last_seen"] for d in snapshots],
            *([(d.get("uptime") or {}).get(window) for d in snapshots]
              for window, _ in _UPTIME_WINDOWS))


_METRIC_PART = 2000  # devices per part of Prometheus' text: about 200 KB per family
_RATIO_TEXTS = {1.0: "1.000000", 0.0: "0.000000"}  # the uptime of most devices, made once


def _fleet_prometheus(rows, status):
    """Prometheus' text of Watcher.metric_rows(), whole (format_fleet's)."""
    return "".join(_fleet_prometheus_parts(rows, status))


def _fleet_prometheus_parts(rows, status):
    """Prometheus' text of Watcher.metric_rows(), in parts of _METRIC_PART devices (a fleet of
    100,000 is tens of MB: written as it is made, never held whole): one series per device
    for up, last seen and uptime (labels that never change with its state), and the state
    it is in (value 1; the series of a state it left ends, as Prometheus marks a series gone
    from a scrape: one line per device, not one per state and device). A device's labels
    are device="name@host",name="name",host="host" as they are, unless it has its own."""
    keys, labels, states, seen, day, week = rows
    parts = [slice(start, start + _METRIC_PART) for start in range(0, len(keys), _METRIC_PART)]

    def split(part):  # (name, "\0", host) of each device of a part, made as it is needed
        return map(str.partition, keys[part], itertools.repeat("\0"))

    def ids(part):  # "name@host" of each device of a part
        return map(str.replace, keys[part], itertools.repeat("\0"), itertools.repeat("@"))

    yield ("# HELP pihace_device_up 1 when the device's newest report says Available and it "
           "is not late, else 0.\n# TYPE pihace_device_up gauge\n")
    for part in parts:
        yield "".join([
            f'pihace_device_up{{device="{n}@{h}",name="{n}",host="{h}"}} '
            f'{1 if s == "up" else 0}\n' if e is None else
            f'pihace_device_up{{{e[0]}}} {1 if s == "up" else 0}\n'
            for (n, _, h), e, s in zip(split(part), labels[part], states[part])])
    yield ("# HELP pihace_device_state The state the device is in (1); the series of a state "
           "it left is gone.\n# TYPE pihace_device_state gauge\n")
    for part in parts:
        yield "".join([f'pihace_device_state{{device="{d}",state="{s}"}} 1\n' if e is None
                       else f'pihace_device_state{{{e[1]},state="{s}"}} 1\n'
                       for d, e, s in zip(ids(part), labels[part], states[part])])
    yield ("# HELP pihace_device_last_seen_timestamp_seconds When the device's newest report "
           "was sent.\n# TYPE pihace_device_last_seen_timestamp_seconds gauge\n")
    for part in parts:
        yield "".join([
            f'pihace_device_last_seen_timestamp_seconds{{device="{n}@{h}",name="{n}",'
            f'host="{h}"}} {t:.3f}\n' if e is None else
            f'pihace_device_last_seen_timestamp_seconds{{{e[0]}}} {t:.3f}\n'
            for (n, _, h), e, t in zip(split(part), labels[part], seen[part])])
    yield ("# HELP pihace_device_uptime_ratio The share of the window the device was up, out "
           "of the time it was watched (paused and stopped not counted).\n"
           "# TYPE pihace_device_uptime_ratio gauge\n")
    ratio_text = _RATIO_TEXTS.get
    for part in parts:  # a window's series, then the next's: one family, any order
        part_ids, part_labels = list(ids(part)), labels[part]
        yield "".join([
            f'pihace_device_uptime_ratio{{device="{d}",window="{window}"}} '
            f'{ratio_text(ratio) or f"{ratio:.6f}"}\n' if e is None else
            f'pihace_device_uptime_ratio{{{e[1]},window="{window}"}} {ratio:.6f}\n'
            for (window, _), column in zip(_UPTIME_WINDOWS, (day, week))
            for d, e, ratio in zip(part_ids, part_labels, column[part]) if ratio is not None])
    yield _fleet_prometheus_totals(states, status)


def _fleet_prometheus_totals(states, status):
    """The fleet's and the watcher's own lines of Prometheus' text."""
    counts = dict.fromkeys(DEVICE_STATES, 0)
    counts.update(collections.Counter(states))  # (counted in C: 100,000 states, 2 ms)
    lines = ["# HELP pihace_devices Devices in each state.", "# TYPE pihace_devices gauge"]
    lines += [f'pihace_devices{{state="{state}"}} {n}' for state, n in counts.items()]
    if status is not None:
        lines += ["# HELP pihace_watch_connected 1 while the watcher reads its queue; 0 while "
                  "it cannot (its view is then stale).", "# TYPE pihace_watch_connected gauge",
                  f"pihace_watch_connected {1 if status['connected'] else 0}"]
        if status.get("standby_group") is not None:
            lines += ["# HELP pihace_watch_leader 1 while this watcher leads its standby group "
                      "(it runs the hooks), 0 while it stands by.",
                      "# TYPE pihace_watch_leader gauge",
                      f'pihace_watch_leader{{group="{_prometheus_label_value(status["standby_group"])}"}} '
                      f'{1 if status["leader"] else 0}']
        if status["last_message"] is not None:
            lines += ["# HELP pihace_watch_last_message_age_seconds Seconds since the newest "
                      "report reached the watcher.",
                      "# TYPE pihace_watch_last_message_age_seconds gauge",
                      f"pihace_watch_last_message_age_seconds "
                      f"{max(0.0, time.time() - status['last_message']):.3f}"]
        lines += ["# HELP pihace_watch_reports_total Reports the watcher received, by outcome.",
                  "# TYPE pihace_watch_reports_total counter"]
        lines += [f'pihace_watch_reports_total{{outcome="{outcome}"}} '
                  f'{status["counts"].get(outcome, 0)}'
                  for outcome in ("applied", "duplicate", "invalid", "stale", "refused")]
    return "\n".join(lines) + "\n"


def _print_change(device, old, new, report):
    """One line per change, for a pipe or a log (device texts were made safe as they came)."""
    failing = f" failing: {', '.join(device['failing'])}" if (
        report is not None and device["failing"]) else ""
    print(f"{get_utc_timestamp()[:19]}Z {device['device']} {old or '-'} -> {new}{failing}",
          flush=True)


def _age(seconds):
    seconds = int(seconds)
    return f"{seconds}s" if seconds < 120 else f"{seconds // 60}m" if seconds < 7200 else \
        f"{seconds // 3600}h"


def fleet_table(devices, width=80, height=24, status=None):
    """The live table's text: a summary line (and, while the watcher cannot see, a line that
    says so), then one line per device, worst first, each cut to `width` columns; as many
    devices as fit in `height` lines."""
    rows = _worst_first(devices)
    summary = ", ".join(f"{n} {state}" for state, n in _state_counts(devices).items() if n)
    name_width = min(40, max([6] + [len(d["device"]) for d in rows]))
    role = "" if status is None or status.get("standby_group") is None else (
        f"   [{'leader' if status['leader'] else 'standby'} of "
        f"{_printable(status['standby_group'])}]")
    lines = [f"pihace watch: {len(rows)} devices{': ' if summary else ''}{summary}   "
             f"{get_utc_timestamp()[:19]}Z{role}"]
    stale = _stale_note(status)
    if stale:
        lines.append(f"!! {stale}")
    lines.append(f"{'DEVICE':<{name_width}}  {'STATE':<8}  {'LAST SEEN':<9}  {'AGE':>5}  "
                 f"{'RATE':<7}  FAILING")
    room = max(1, height - len(lines) - 1)
    for device in rows[:room if len(rows) <= room else room - 1]:
        name = device["device"]
        if len(name) > name_width:
            name = name[:name_width - 1] + "~"
        seen = time.strftime("%H:%M:%S", time.gmtime(device["last_seen"]))
        note = ", ".join(device["failing"])
        if device["state"] == "paused":
            note = f"{device.get('pause_reason') or 'paused'}" + (
                f" ({device['paused_by']})" if device.get("paused_by") else "")
        lines.append(f"{name:<{name_width}}  {device['state']:<8}  {seen:<9}  "
                     f"{_age(device['age']):>5}  {device['rate'] or '-':<7}  {note}")
    if len(rows) > room:
        lines.append(f"... and {len(rows) - room + 1} more")
    return "\n".join(line[:width] for line in lines)


def _live_table(watcher):
    """Redraw the table in place: cursor home, the table, clear what is left below."""
    import shutil  # here, not at the top: slow to import (see the imports)

    size = shutil.get_terminal_size()
    table = fleet_table(watcher.devices, size.columns, size.lines, watcher.status)
    sys.stdout.write("\x1b[?25l\x1b[H" + table.replace("\n", "\x1b[K\n") + "\x1b[K\x1b[J")
    sys.stdout.flush()


class _Reading:
    """One reading of the fleet for /metrics, which a weak reference can point to."""

    __slots__ = ("rows", "status", "making", "__weakref__")

    def __init__(self, rows, status, making=contextlib.nullcontext):
        self.rows, self.status, self.making = rows, status, making

    def text(self):
        """Prometheus' text, encoded a part at a time: the reading is kept while it is sent,
        within `making` (Watcher._making_page)."""
        with self.making():
            for part in _fleet_prometheus_parts(self.rows, self.status):
                yield part.encode()


# What a hook inherits of the watcher's environment: nothing else (no PIHACE_AMQP_PASSWORD).
_HOOK_ENVIRONMENT = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER",
                     "LOGNAME")


class _Hooks:
    """--on-change: runs a command per change, with bounded concurrency and a timeout; the
    watcher only queues (a full queue drops the change, counted and logged). The command
    gets the report as JSON on its standard input and the change in PIHACE_DEVICE,
    PIHACE_NAME, PIHACE_HOST, PIHACE_OLD_STATE, PIHACE_NEW_STATE and PIHACE_FIRST_SEEN; its
    environment holds nothing else of the watcher's but PATH, HOME, the locale and TZ.
    `states`: the new states that run it (all when empty)."""

    def __init__(self, command, timeout, states=(), workers=4, backlog=1000):
        import shlex  # here, not at the top: only --on-change needs it
        import shutil  # likewise

        self.command = shlex.split(command)
        self.timeout = _seconds("--hook-timeout", timeout)
        if not self.command:
            raise ValueError("--on-change needs a command")
        self._program = shutil.which(self.command[0])  # the path that runs, found once
        if self._program is None:
            raise ValueError(f"--on-change: no program {_printable(self.command[0])!r} "
                             "(not found, or not executable)")
        unknown = set(states) - set(DEVICE_STATES)
        if unknown:
            raise ValueError(f"--on-change-states: unknown state(s) "
                             f"{_printable(', '.join(sorted(unknown)))}; the states are "
                             f"{', '.join(DEVICE_STATES)}")
        self.states = frozenset(states)
        self.dropped = 0
        # what the watcher was started with open (a lock, a supervisor's pipe): closed in a
        # hook, as subprocess does (else subprocess runs them)
        self._inherited = _inheritable_descriptors()
        self._spawns = _can_spawn_hooks() and self._inherited is not None
        self._environment = {name: os.environ[name] for name in _HOOK_ENVIRONMENT
                             if name in os.environ}
        self._queue = queue.Queue(backlog)
        self._threads = [threading.Thread(target=self._work, daemon=True, name="pihace-hook")
                         for _ in range(workers)]
        for thread in self._threads:
            thread.start()

    def __call__(self, device, old, new, report):
        import json  # here, not at the top: slow to import (see the imports)

        if self.states and new not in self.states:
            return
        env = dict(self._environment, PIHACE_DEVICE=device["device"],
                   PIHACE_NAME=device["name"], PIHACE_HOST=device["host"],
                   PIHACE_OLD_STATE=old or "", PIHACE_NEW_STATE=new,
                   PIHACE_FIRST_SEEN=f"{device['first_seen']:.3f}",
                   PIHACE_REMINDER="1" if device.get("reminder") else "")
        stdin = (json.dumps(report) if report is not None else "").encode()
        try:
            self._queue.put_nowait((env, stdin))
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                log.warning("--on-change is too slow: dropped %d change(s) so far", self.dropped)

    def _work(self):
        while True:
            job = self._queue.get()
            if job is None:
                return
            env, stdin = job
            try:
                code = _run_spawned(self._program, self.command, env, stdin, self.timeout,
                                    self._inherited) if self._spawns else \
                    self._run_subprocess(env, stdin)
                if code is None:
                    log.warning("--on-change ran past %gs for %s: killed", self.timeout,
                                env["PIHACE_DEVICE"])
                elif code:
                    log.warning("--on-change exited with %d for %s", code, env["PIHACE_DEVICE"])
            except OSError as exc:
                log.warning("--on-change cannot run: %s", describe_error(exc))

    def _run_subprocess(self, env, stdin):
        """The command run by subprocess, where _run_spawned cannot: its exit status, or
        None when it ran past the timeout (killed)."""
        import subprocess  # here, not at the top: only --on-change needs it

        try:
            return subprocess.run(self.command, env=env, timeout=self.timeout, input=stdin,
                                  stdout=subprocess.DEVNULL).returncode
        except subprocess.TimeoutExpired:
            return None

    def close(self, timeout=5.0):
        """Let the queued commands finish (each within its timeout), at most `timeout`
        seconds more; then stop the workers."""
        for _ in self._threads:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(_time_left(deadline))


def _can_spawn_hooks():
    """Can _run_spawned run a hook here: posix_spawn, and pidfds (Linux 5.3, Python 3.9)?"""
    try:
        os.close(os.pidfd_open(os.getpid()))  # novermin: Python 3.9+ (else AttributeError)
    except (AttributeError, OSError):
        return False
    return hasattr(os, "posix_spawn") and hasattr(os, "waitstatus_to_exitcode")


def _inheritable_descriptors():
    """The file descriptors past 2 that a command started now would inherit (Python opens
    none such: only what this process was started with), where /proc tells; else None."""
    try:
        numbers = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return None
    found = []
    for number in numbers:
        try:
            if number > 2 and os.get_inheritable(number):
                found.append(number)
        except OSError:  # the directory's own, closed since
            pass
    return found


def _run_spawned(program, argv, env, stdin, timeout, inherited=()):
    """What subprocess.run(argv, env=env, input=stdin, stdout=DEVNULL, timeout=timeout)
    does, for its exit status (-N: killed by signal N), or None when it ran past `timeout`
    (killed), with half of the watcher's user CPU (bench_hooks.py): spawned (posix_spawn
    copies nothing of the watcher) and awaited on a pidfd, where subprocess polls with
    sleeps that double (100,000 devices, a few percent of them changing: 28 hooks a second). SIGPIPE and SIGXFSZ are
    back at their defaults in it (Python ignores SIGPIPE), as a shell script expects, and
    the descriptors `inherited` (_inheritable_descriptors) are closed in it."""
    import signal  # here, not at the top: only --on-change needs it

    deadline = time.monotonic() + timeout
    reader, writer = os.pipe()
    try:
        pid = os.posix_spawn(program, argv, env, setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
                             file_actions=[(os.POSIX_SPAWN_DUP2, reader, 0),
                                           (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY,
                                            0)] + [(os.POSIX_SPAWN_CLOSE, number)
                                                   for number in inherited])
    except BaseException:
        os.close(writer)
        raise
    finally:
        os.close(reader)
    killed, ended = False, None
    try:
        try:
            # readable once the process has ended (should it fail, EMFILE say, the hook
            # already started is killed below, and the failure logged)
            ended = os.pidfd_open(pid)  # novermin: _can_spawn_hooks() said it is there
            waiting = select.poll()
            waiting.register(ended, select.POLLIN)
            _feed(writer, stdin, waiting, ended, deadline)
        finally:
            os.close(writer)  # the end of its standard input
        if not waiting.poll(_milliseconds_left(deadline)):
            os.kill(pid, signal.SIGKILL)
            killed = True
    except BaseException:  # never a process left running unwatched, nor a zombie
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    finally:
        if ended is not None:
            os.close(ended)
    status = os.waitpid(pid, 0)[1]
    return None if killed else os.waitstatus_to_exitcode(status)  # novermin: likewise


def _feed(writer, data, waiting, ended, deadline):
    """Write `data` into the pipe `writer` as the process reads it, until it is all in, the
    process has ended or closed its end, or the deadline. `waiting`: a poll object that
    watches `ended`, the process's pidfd."""
    os.set_blocking(writer, False)
    waiting.register(writer, select.POLLOUT)
    unsent = memoryview(data)
    while unsent:
        left = _milliseconds_left(deadline)
        ready = dict(waiting.poll(left))
        if not left or not ready or ended in ready:
            break
        try:
            unsent = unsent[os.write(writer, unsent):]
        except BlockingIOError:  # (writable, yet full again: poll once more)
            continue
        except BrokenPipeError:  # it closed its standard input
            break
    waiting.unregister(writer)


def _milliseconds_left(deadline):
    """poll()'s timeout until `deadline` (time.monotonic())."""
    return max(0, math.ceil((deadline - time.monotonic()) * 1000))


class _FleetPages:
    """What `pihace watch --listen` answers, on the HTTP server's hardened classes (the
    same limits on slow and malformed requests as HealthServer): /metrics, /devices (JSON,
    a page of `limit` devices from `offset`, worst first) and /livez. The fleet is read
    and rendered at most once per `refresh` seconds, and every request in that second
    shares the same bytes (/metrics: the same reading, while one of them is being sent)."""

    request_timeout = max_wait = 10.0
    page_limit = 1000  # devices per /devices page unless ?limit= says (at most max_limit)
    max_limit = 10000

    def __init__(self, watcher, refresh=1.0):
        self.watcher, self.refresh = watcher, refresh
        self._lock = threading.RLock()  # a rendering may read the shared view: same thread
        self._rendered = {}  # what -> (when, value)

    def _cached(self, what, make):
        """make() once per `refresh` seconds, or once per 20 times what it took when that is
        longer (a fleet of 100,000 devices read for the page: never more than 5 % of a
        core, however many pages are open); every caller in between gets its value."""
        with self._lock:
            made = self._rendered.get(what)
            if made is None or time.monotonic() >= made[0]:
                started = time.monotonic()
                value = make()
                # fresh from when it is done: the requests that waited for it share it,
                # even when rendering takes longer than `refresh` (else each renders again)
                done = time.monotonic()
                made = self._rendered[what] = (
                    done + max(self.refresh, 20 * (done - started)), value)
            return made[1]

    def _metric_reading(self):
        """The fleet read for /metrics (a _Reading of Watcher.metric_rows() and status): at
        most once per `refresh` seconds, shared by the requests answered meanwhile, and let
        go when the last of them is sent (100,000 devices: 18 MB not kept from one scrape to
        the next). Each request's text is made as it is sent, a part at a time."""
        with self._lock:
            made = self._rendered.get("metrics")
            reading = made[1]() if made else None
            if reading is None or time.monotonic() - made[0] >= self.refresh:
                with self.watcher._making_page():  # the reading too is a long turn
                    rows = self.watcher.metric_rows()
                reading = _Reading(rows, self.watcher.status, self.watcher._making_page)
                self._rendered["metrics"] = (time.monotonic(), weakref.ref(reading))
            return reading

    def _view(self):
        """(devices, status, worst first): a reading of the whole fleet, for a page to
        render (and cache: the reading itself is not kept, 100,000 devices' dicts are more
        than 100 MB)."""
        devices = self.watcher.devices
        return devices, self.watcher.status, _worst_first(devices)

    def respond(self, path, query, accept):
        page = _page_answer(self, path, query, accept)  # /, /devices/<id>, /static/...
        if page is not None:
            return page
        if path == "/metrics":
            return 200, _PROMETHEUS_TEXT, self._metric_reading().text(), []
        if path in ("/", "/devices"):
            return self._devices_page(query)
        if path == "/livez":  # the watcher process answers; its view may be stale (/devices)
            return 200, _TEXT_PLAIN, b"ok\n", []
        return 404, _TEXT_PLAIN, b"not found: try /metrics, /devices or /livez\n", []

    def _devices_page(self, query):
        import json  # here, not at the top: slow to import (see the imports)
        from urllib.parse import parse_qs  # likewise

        fields = parse_qs(query)
        try:
            offset = int(fields.get("offset", ["0"])[0])
            limit = int(fields.get("limit", [str(self.page_limit)])[0])
            if offset < 0 or not 1 <= limit <= self.max_limit:
                raise ValueError
        except ValueError:
            return (400, _TEXT_PLAIN, f"offset must be an integer >= 0 and limit one from 1 to "
                    f"{self.max_limit}\n".encode(), [])
        if (offset, limit) == (0, self.page_limit):  # the usual request: shared for a second
            total, counts, page = self._cached("devices", self.watcher.devices_page)
        else:
            total, counts, page = self.watcher.devices_page(offset, limit)
        worst = max((_EXIT_CODE_OF_STATE.get(state, 0) for state, n in counts.items() if n),
                    default=0)
        document = {"status": _NAGIOS_WORDS[worst], "counts": counts,
                    "watcher": self.watcher.status, "total": total, "offset": offset,
                    "limit": limit, "devices": page}
        return 200, "application/json", json.dumps(document, indent=1).encode(), []
