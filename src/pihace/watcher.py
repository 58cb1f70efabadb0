"""watcher: consuming the fleet's reports, one state per device, hooks on changes. Never blames a
device for the watcher's own blindness: while it cannot read, states are kept and marked stale."""

from __future__ import annotations

import collections
import contextlib
import gc
import itertools
import math
import os
import threading
import time

from .header import log
from .errors import ChannelClosed, Interrupted, PihaceError
from .helpers import _number, _printable, _seconds, describe_error
from .amqp_wire import encode_properties
from .transport import Backoff, Wakeup, _Message
from .client import _AMQPClient, _check_name
from .statefile import read_state, write_atomically
from .devices import (
    Device, DEVICE_STATES, _device_key, _FAILING_LIMIT, _HostEvent, _id_keys,
    _packed_transitions, _REMINDED_STATES, _report_text, _roster_entry, _STATE_OF_STATUS,
    _STATE_RANK, _STATE_OF_TEXT, _STATUS_TEXT, _TRANSITIONS_KEPT, _UPTIME_WINDOWS,
)


_WATCH_HEARTBEAT = 5  # seconds: a dead link is noticed within seconds, not minutes
_QUEUE_CHECK = 5.0  # seconds between two looks at the queue (passive declare)
_ACK_PAUSE = 0.02  # seconds without a delivery after which the applied ones are acknowledged
_LINGER = 0.02  # seconds to let more reports come after a look that found only a few
_SOON_TICKS = 10  # check_ages looks at every device once per ten ticks, at those due soon each
# of the state file: a newer one is refused, never overwritten (2: what is as usual left
# out of a device's entry, which 1 cannot read)
_STATE_FORMAT = 2
_LEADER_CHANNEL = 2  # the channel a watcher of a standby group holds its group's queue on
_LEADER_RETRY = 2.0  # seconds between two tries of a standby to become the leader
_HANDLED_TYPE = "pihace.watch.handled"  # the AMQP type of the leader's notices
_PENDING_FOR = 60.0  # seconds a standby keeps a change no leader said it handled
_CONTROL_TYPE = "pihace.watch.control"  # the AMQP type of an operator's pause or resume
_FLIPS_LIMIT = 10 << 20  # bytes of the flip log before it is rotated (one older file kept)


@contextlib.contextmanager
def _no_collection():
    """No cyclic garbage collection while a snapshot of every device is built: 100,000 new
    dicts would set it off again and again (it took two thirds of the time), and they form
    no cycle."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _let_waiters_in():
    """A pause between two turns of a long reading under the watcher's lock: a lock is not
    fair, so without it the reader takes it again at once, and the watcher's thread, which
    waits for it to apply a report, waits for the whole reading."""
    time.sleep(0.001)


def _callbacks(what, given):
    """A list of callables from None, one callable, or a list of them."""
    callbacks = given if isinstance(given, (list, tuple)) else [given]
    if not all(callable(callback) for callback in callbacks if callback is not None):
        raise TypeError(f"{what} must be a callable or a list of callables")
    return [callback for callback in callbacks if callback is not None]


def _call(callbacks, *change):
    for callback in callbacks:
        try:
            callback(*change)
        except Exception as exc:  # a bug in a callback must not stop the watcher
            log.error("on_change callback %s failed: %s", _printable(repr(callback)),
                      describe_error(exc))


class Watcher(_AMQPClient):
    """Consumes the fleet's health reports and keeps one state per device.

    A device is a component name on a host (a report without a name falls
    back to the AMQP app_id, then user_id). Its state follows its newest
    report's status at once (`up`, `degraded` or `down`, from its first
    report on); `late` when no report came for interval + grace seconds,
    `silent` after interval + silent_grace (or silent_limit, if sooner). The
    interval is the report's own `interval` key (pushers in a loop send it),
    else `default_interval`. Each change calls every on_change(device,
    old_state, new_state, report) once (device: a dict; report: None for late
    and silent); a device's first report calls them (with old_state None) only
    with `announce_first`.

    The watcher never blames a device for its own blindness: while it is not
    connected, or the broker has sent nothing for a heartbeat, devices keep
    their states, marked stale, and the time it could not see does not count
    against them. A report sent live (not one that waited in the queue before
    the watcher connected) whose timestamp is off from its arrival by more than
    the device's grace (a wrong clock) counts from its arrival.

    Delivery is at-least-once: a report is acknowledged only after it has been
    applied; one that repeats one of the last `dedup_window` message ids of the
    same device is counted as a duplicate and not applied again (a message can
    make no other device's report a duplicate). Redelivered reports come back
    before any newer one, and a report older than the device's newest is stale
    whatever its id: the window covers a device's last reports, 8 by default (64
    bytes a device; 100,000 devices hold about 17 MB more with 32). A report
    that is not JSON, not a pihace report, or larger than max_report_size bytes
    is counted, logged (once per producer) and acknowledged, so it cannot come
    back. At most max_devices are kept (a report of one more is refused, counted
    and logged); with `forget_after`, a device silent that long is forgotten.
    After any loss the watcher reconnects with exponential backoff and jitter,
    trying each URL in turn.
    """

    default_heartbeat = _WATCH_HEARTBEAT

    def __init__(self, amqp_url="amqp://guest:guest@localhost:5672/",
                 queue_name="pihace.healthcheck", *, exchange="", exchange_type=None,
                 binding_key="#", declare=True, queue_arguments=None, prefetch=100,
                 default_interval=60.0, grace=None, silent_grace=None, silent_limit=None,
                 on_change=None, on_view_change=None, announce_first=False,
                 standby_group=None, tick=1.0, max_report_size=1 << 20,
                 dedup_window=8, max_devices=100000, forget_after=None, state_path=None,
                 state_every=5.0, history_path=None, down_after=1, up_after=1,
                 max_interval=86400.0, remind=None, roster=None, ignore_unexpected=False,
                 heartbeat=None, timeout=10.0, connection_name="pihace watch",
                 ssl_context=None, socket_factory=None, wall_clock=time.time):
        super().__init__(
            amqp_url, {"queue_name": queue_name, "binding_key": binding_key},
            exchange=exchange, exchange_type=exchange_type, queue_arguments=queue_arguments,
            heartbeat=heartbeat, timeout=timeout, connection_name=connection_name,
            ssl_context=ssl_context, socket_factory=socket_factory)
        if not queue_name and not exchange:
            raise ValueError("queue_name may be empty (a queue of the watcher's own) only with "
                             "an exchange to bind it to")
        self._set_rules(prefetch=prefetch, max_report_size=max_report_size,
                        dedup_window=dedup_window, max_devices=max_devices,
                        default_interval=default_interval, grace=grace,
                        silent_grace=silent_grace, silent_limit=silent_limit,
                        forget_after=forget_after, down_after=down_after, up_after=up_after,
                        max_interval=max_interval, remind=remind, tick=tick)
        self.ignore_unexpected = bool(ignore_unexpected)
        self._roster = None  # device id -> its settings, once a roster is given
        self._pauses = {}  # device id -> (until, reason, by): pauses set by an operator
        self._capped = set()  # devices whose interval was capped at max_interval (logged once)
        self._rates = {}  # the rates reports carry ("3/3"): one str of each, shared
        self._shared_limits = {}  # interval -> (interval, late after): floats shared
        self.on_change = _callbacks("on_change", on_change)
        self.on_view_change = _callbacks("on_view_change", on_view_change)
        self._set_standby(standby_group, exchange)
        self.announce_first = bool(announce_first)
        self.queue_name, self.binding_key, self.declare = queue_name, binding_key, declare
        self._ack_every = max(1, prefetch // 2) if prefetch else 50
        self.wall_clock = wall_clock  # seconds since 1970: reports' timestamps are on it
        # applied, duplicate, invalid, stale, refused, skewed, forgotten: 0 when missing
        # (reading one adds it), not a Counter: Counter defines __delitem__ in Python, so
        # each of its `+= 1` stores through a Python-level lookup of __setitem__
        self.counts = collections.defaultdict(int)
        self.last_error = None  # why it could not read, the last time it could not
        self._devices = {}  # Device.key ("name\0host") -> Device
        # no device but those of _soon is due before this (a lower bound: check_ages looks at
        # every device only from then on); whoever makes a device due earlier lowers it
        self._earliest_due = -math.inf
        self._soon = []  # the devices due within _SOON_TICKS at the last look at every device
        self._lock = threading.Lock()  # the devices, for snapshots from other threads
        self._garbage_from = set()  # producers whose bad reports were logged already
        import json.scanner  # here, not at the top: slow to import (see the imports)

        # scan(text, index) -> (value, end): what JSONDecoder.raw_decode calls, minus a frame
        self._json_loads, self._scan_json = json.loads, json.scanner.make_scanner(
            json.JSONDecoder())
        self._unacked, self._last_tag = 0, None  # applied, not acknowledged yet (acks batch)
        # Reports that waited in the queue when it connected: their timestamps are believed
        # as they are (sent long ago); a report sent live and stamped far from now is a clock off.
        self._backlog = 0
        self._next_tick = self._next_queue_check = -math.inf
        self._queue = None  # the name of the queue it consumes, once it does
        self._consumers = 1  # on that queue, at the last look
        # Its sight: None while it sees (or is fed by hand), else since when it is blind and why.
        self._blind_since, self._blind_why = None, None
        self._connected_since = None  # wall-clock time it (re)gained sight, once it did
        self._last_message = None  # wall-clock time of the newest delivery
        self._delivered_since_check = self._checked_before = self._stuck = False
        self._set_memory(state_path, state_every, history_path)
        if roster is not None:
            self.set_roster(roster)

    def __repr__(self):
        return f"<Watcher {self.parameters.safe_url} queue={self.queue_name!r}>"

    def _set_rules(self, *, prefetch, max_report_size, dedup_window, max_devices,
                   default_interval, grace, silent_grace, silent_limit, forget_after,
                   down_after, up_after, max_interval, remind, tick):
        """The numbers that rule devices and consuming, each checked (a ValueError names it)."""
        def seconds_or_none(name, value):
            return None if value is None else _seconds(name, value)

        def at_least_one(name, value):
            return _number(name, value, lambda v: v >= 1, "an integer >= 1", int)

        self.prefetch = _number("prefetch", prefetch, lambda v: 0 <= v <= 65535,
                                "an integer from 0 to 65535", int)
        self.max_report_size = at_least_one("max_report_size", max_report_size)
        self.dedup_window = _number("dedup_window", dedup_window, lambda v: v >= 0,
                                    "an integer >= 0", int)
        self.max_devices = at_least_one("max_devices", max_devices)
        self.default_interval = _seconds("default_interval", default_interval)
        self.grace = seconds_or_none("grace", grace)
        self.silent_grace = seconds_or_none("silent_grace", silent_grace)
        self.silent_limit = seconds_or_none("silent_limit", silent_limit)
        self.forget_after = seconds_or_none("forget_after", forget_after)
        self.down_after = at_least_one("down_after", down_after)
        self.up_after = at_least_one("up_after", up_after)
        self.max_interval = _seconds("max_interval", max_interval)
        self.remind = seconds_or_none("remind", remind)
        self.tick = _seconds("tick", tick)

    def _set_memory(self, state_path, state_every, history_path):
        """Its memory across restarts: read now (a ValueError says why it must not be used),
        written at most every state_every seconds while something changed, and at the end;
        its flip log beside it."""
        self.state_path, self.state_every = state_path, _seconds("state_every", state_every)
        self.history_path = history_path if history_path is not None or state_path is None \
            else f"{state_path}.flips"
        self._flips = []  # transitions not written to the flip log yet
        self._dirty, self._next_save = False, -math.inf
        self._saver = None  # the thread writing the state file, while it does
        # pages (/metrics) being made from a reading now: a save waits for them between its
        # parts (two long turns at once, each with half of the interpreter, would make a
        # scrape of 100,000 devices take twice as long)
        self._pages_made = 0
        self._no_page_made = threading.Condition(threading.Lock())
        document = None if state_path is None else read_state(
            state_path, "pihace_watch_state", _STATE_FORMAT, listed="devices")
        # the key of message ids' digests (_id_keys): the state file's, which its ids' keys
        # were made with, or a new one
        try:
            self._id_secret = bytes.fromhex(document.get("id_secret"))
            if len(self._id_secret) != 16:
                raise ValueError("not 16 bytes")
        except (AttributeError, TypeError, ValueError):  # no file, a file of format 1
            self._id_secret = os.urandom(16)
        self._id_key = _id_keys(self._id_secret)
        self._restore(document)

    def _set_standby(self, standby_group, exchange):
        """A standby group's name, and the state of its leadership."""
        if standby_group is not None:
            if not exchange:
                raise ValueError("standby_group needs an exchange: each watcher of the group "
                                 "consumes a queue of its own bound to it")
            _check_name("standby_group", f"pihace.watch.leader.{standby_group}")
        self.standby_group = standby_group
        self._leader = None if standby_group is None else False  # None: no group, it leads
        self._next_leader_try = -math.inf
        self._last_turn = math.inf  # when _consume last ran (a paused leader must know)
        self._pending = {}  # device id -> (device, old, new, report, when): not handled yet
        self._handled = {}  # device id -> (new state, when): what the leader said it handled

    # -- what it knows ----------------------------------------------------------

    @property
    def devices(self):
        """A snapshot: {device id: dict of name, host, state, since, status, first_seen,
        last_seen, age, interval, reports, rate, failing, stale}; `stale` is true while the
        watcher cannot see (its states are then as last seen)."""
        now = self.wall_clock()
        with self._lock, _no_collection():
            return {device.id: self._snapshot(device, now) for device in self._devices.values()}

    def device(self, device_id):
        """A snapshot of one device (as in `devices`), or None when none has that id."""
        name, _, host = device_id.rpartition("@")
        with self._lock:
            device = self._devices.get(_device_key(name, host) if name else f"{device_id}\0")
            if device is None or device.id != device_id:
                device = self._devices.get(f"{device_id}\0")
            return None if device is None else self._snapshot(device, self.wall_clock())

    def devices_page(self, offset=0, limit=1000):
        """(how many devices, how many in each state, snapshots of `limit` devices from
        `offset`, worst first: state, then the longest silence, then the id). Only the page
        is snapshot: a page of 100,000 devices costs a sort, not 100,000 dicts."""
        now, rank = self.wall_clock(), _STATE_RANK
        counts = dict.fromkeys(DEVICE_STATES, 0)
        with self._lock, _no_collection():
            keyed = []
            for device in self._devices.values():
                counts[device.state] += 1
                keyed.append((rank[device.state], device.last_seen, device.id, device))
            keyed.sort(key=lambda entry: entry[:3])
            page = [self._snapshot(device, now) for *_, device in keyed[offset:offset + limit]]
        return len(keyed), counts, page

    def metric_rows(self):
        """What Prometheus' text is made of (_fleet_prometheus_parts): lists of the devices'
        keys ("name\0host"), labels (their Prometheus labels, or None when they are written
        as they are), states, last_seen, uptimes over 24 h and over 7 d, in the order they
        were first seen. Lists of what the devices hold, not an object made per device: a
        scrape of 100,000 leaves no garbage scattered among them."""
        now = self.wall_clock()
        with self._lock:
            devices = list(self._devices.values())
        count = len(devices)
        states, seen, day, week = [None] * count, [None] * count, [None] * count, [None] * count
        # five thousand devices at a time under the lock (a few ms), reports applied in
        # between: 100,000 held all along would hold back every change for a tenth of a second
        for start in range(0, count, 5000):
            if start:
                _let_waiters_in()
            end = start + 5000
            with self._lock, _no_collection():
                part = devices[start:end]
                states[start:end] = [device.state for device in part]
                seen[start:end] = [device.last_seen for device in part]
                # (uptimes: for the usual device, in one state since it was first seen, one
                # shared constant for both windows; no pair made per device, which would
                # leave 100,000 small objects scattered among theirs)
                (_, day_window), (_, week_window) = _UPTIME_WINDOWS
                day[start:end] = ratios = [device.uptime(now, day_window) for device in part]
                week[start:end] = [ratio if type(device.transitions) is tuple else
                                   device.uptime(now, week_window)
                                   for device, ratio in zip(part, ratios)]
        # (a label of its own is one of a device's rare fields: most have none of them)
        return ([device.key for device in devices],
                [None if device.rare is None else device.label for device in devices],
                states, seen, day, week)

    @contextlib.contextmanager
    def _making_page(self):
        """While the fleet is read by metric_rows() and while a page is made of it (long
        turns, a scrape of 100,000 devices about half a second): the state file's save waits
        between its parts (two long turns at once, each with half of the interpreter)."""
        with self._no_page_made:
            self._pages_made += 1
        try:
            yield
        finally:
            with self._no_page_made:
                self._pages_made -= 1
                self._no_page_made.notify_all()

    def _snapshot(self, device, now):
        """A device as a dict, with what the watcher knows of it besides: stale, an
        operator's pause, its uptime."""
        snapshot = device.snapshot(now, self._blind_since is not None)
        pause = self._pauses.get(snapshot["device"]) if self._pauses else None
        snapshot["paused_by"] = None
        if pause is not None and pause[0] > now and pause[0] >= device.paused_until:
            snapshot["paused_until"], snapshot["pause_reason"], snapshot["paused_by"] = pause
        snapshot["uptime"] = dict(zip((name for name, _ in _UPTIME_WINDOWS),
                                      device.uptimes(now)))
        if device.listed:
            snapshot["tags"], snapshot["owner"] = (device.listed.get("tags", []),
                                                    device.listed.get("owner"))
        return snapshot

    @property
    def status(self):
        """The watcher's own health: {"connected", "since" (when it gained or lost sight),
        "reason" (why it cannot see, or None), "last_message" (wall-clock time of the newest
        delivery, or None), "consumers" (on its queue, at the last look), "leader" (None
        without a standby group), "standby_group", "devices", "counts"}."""
        blind = self._blind_since is not None
        return {"connected": not blind,
                "since": self._blind_since if blind else self._connected_since,
                "reason": self._blind_why if blind else None,
                "last_message": self._last_message, "consumers": self._consumers,
                "leader": self._leader, "standby_group": self.standby_group,
                "devices": len(self._devices), "counts": dict(self.counts)}

    def _limits(self, interval, settings=None):
        """(late, silent): the seconds without a report after which a device is each; a
        roster's `settings` of the device override its interval and grace."""
        if settings:
            interval = settings.get("interval", interval)
            grace = settings.get("grace", self.grace)
        else:
            grace = self.grace
        grace = grace if grace is not None else max(0.5 * interval, 2.0)
        silent = interval + (self.silent_grace if self.silent_grace is not None else 4 * grace)
        if self.silent_limit is not None:
            silent = min(silent, self.silent_limit)
        return interval + grace, max(silent, interval + grace)

    def _interval_limits(self, interval, settings):
        """(interval, late after) as floats, shared by the devices without a roster's
        settings that report the same interval (not two floats per device)."""
        if settings:
            return float(interval), self._limits(interval, settings)[0]
        shared = self._shared_limits.get(interval)
        if shared is None:
            shared = float(interval), self._limits(interval)[0]
            if len(self._shared_limits) < 1000:
                self._shared_limits[interval] = shared
        return shared

    # -- applying reports -------------------------------------------------------

    def apply(self, body, properties=None, now=None):
        """Apply one report (bytes, as it came) to its device: "applied", "duplicate",
        "invalid" (counted and logged), "stale" (older than the device's newest) or
        "refused" (a new device beyond max_devices). `properties` are its AMQP properties
        (message_id, timestamp, app_id, ...). Never raises for what a report holds."""
        # The watcher's hot path (bench_watch.py times it with 50,000 devices): few calls,
        # and the usual case first.
        properties = properties or {}
        report = self._parse(body, properties)
        if report is None:
            self.counts["invalid"] += 1
            return "invalid"
        outcome = self._update(report, properties, self.wall_clock() if now is None else now)
        if type(outcome) is str:
            self.counts[outcome] += 1
            return outcome
        self.counts["applied"] += 1
        if outcome is not None and (self.on_change or self.on_view_change):
            self._fire(*outcome)
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
        except (ValueError, TypeError, RecursionError):  # UnicodeDecodeError is a ValueError
            return self._garbage(properties, body, "not JSON")
        if type(report) is not dict or type(report.get("status")) is not str or \
                report["status"] not in _STATE_OF_STATUS:
            return self._garbage(properties, body, "not a pihace report (no valid status)")
        return report

    def _garbage(self, properties, body, why):
        size = properties.get("body_size", len(body) if isinstance(body, (bytes, str)) else 0)
        producer = _report_text(properties.get("app_id") or properties.get("user_id") or "?",
                                60)
        if producer not in self._garbage_from and len(self._garbage_from) < 1000:
            self._garbage_from.add(producer)
            log.warning("ignored a message of %d bytes from '%s': %s (logged once per "
                        "producer)", size, producer, why)
        return None

    def _update(self, report, properties, now):
        """Apply a parsed report to its device: "stale", "duplicate" or "refused" when it
        is not applied; else None when no callback is owed, or the change to announce."""
        component = report.get("component")
        name = (component.get("name") if type(component) is dict else None) or properties.get(
            "app_id") or properties.get("user_id") or "unknown"
        host = report.get("host") or ""
        interval = report.get("interval")
        if type(interval) not in (float, int) or not 0 < interval < 1e6:  # bool, NaN, text...
            interval = self.default_interval
        elif interval > self.max_interval:
            interval = self._capped_interval(name, host, interval)
        stamp = properties.get("timestamp")  # whole seconds: the report left within 1 s after
        stamp = stamp + 1.0 if type(stamp) is int and stamp > 0 else now
        message_id = properties.get("message_id")
        if type(message_id) is not str:
            message_id = None if type(message_id) not in (bytes, int) else message_id
        id_key = None if message_id is None else self._id_key(message_id)
        rate = report.get("rate")
        if rate:  # one of the few texts a fleet sends ("3/3"), each made safe once
            rate = type(rate) is str and self._rates.get(rate) or self._shared_rate(rate)
        with self._lock:
            # A known device's name and host were made safe when it was first seen: the same
            # texts need no second look (the usual case; a NUL in them makes a key no device
            # has, so they are made safe and looked up again)
            device = self._devices.get(f"{name}\0{host}") if type(name) is str and \
                type(host) is str else None
            if device is None:
                name, host = _report_text(name), _report_text(host)
                device = self._devices.get(_device_key(name, host))
            first = device is None
            if first:
                device = self._new_device(name, host, now)
                if type(device) is str:
                    return device  # "refused" or "unexpected"
            elif id_key is not None and device.ids.find(id_key) >= 0:  # (not `in`: for
                # bytes, it first tries the key as an int and formats the TypeError; 8 bytes
                # found unaligned: 1 chance in 2**64 a place)
                return "duplicate"
            elif stamp < device.last_stamp:
                return "stale"  # an older report that came late (an outbox, say)
            if stamp > now:  # never later than its arrival
                stamp = now
            if interval != device.interval:  # the limits follow it; grace and the rest are fixed
                device.interval, device.late_after = self._interval_limits(interval,
                                                                           device.listed)
            seen = stamp
            if not self._backlog and abs(now - stamp) > device.late_after - device.interval + 1:
                seen = now  # sent just now, yet stamped far from now: a clock that is off
                self._skewed(device, now - stamp)
            if id_key is not None and self.dedup_window:
                device.remember(id_key, self.dedup_window)
            device.status, device.last_stamp = _STATUS_TEXT[report["status"]], stamp
            device.last_seen = device.judged_from = seen
            device.reports += 1
            device.rate, failure = rate or None, report.get("failure")
            device.failing = tuple(_report_text(check) for check in itertools.islice(
                failure, _FAILING_LIMIT)) if type(failure) is dict and failure else ()
            new = self._take_flags(device, report, seen, now)
            self._dirty = True
            if device.due < self._earliest_due:
                self._earliest_due = device.due
            if new == device.state:
                return None
            old = self._change(device, new, now)
            if first and not self.announce_first:
                return None
            return device, old, new, report, now

    def _shared_rate(self, rate):
        """A report's rate ("3/3") made safe, as one str for each the fleet sends, not one
        per device."""
        shared = self._rates.get(rate) if type(rate) is str else None
        if shared is None:
            shared = _report_text(rate, 20)
            if len(self._rates) < 1000:
                self._rates[shared] = shared
        return shared

    def _new_device(self, name, host, now):
        """A new device, tracked: "refused" beyond max_devices, "unexpected" when a roster
        does not list it and such devices are ignored."""
        if len(self._devices) >= self.max_devices:
            return self._refuse(name, host)
        listed = None
        if self._roster is not None:
            listed = self._roster.get(f"{name}@{host}" if host else name, False)
            if listed is False and self.ignore_unexpected:
                return "unexpected"
        device = Device(name, host, now)
        self._devices[device.key] = device
        device.listed = listed
        return device

    def _take_flags(self, device, report, seen, now):
        """The device's state once its newest report is in: what it says of itself (stopped,
        paused until), its status damped, then the watcher's rules (_state_now)."""
        if report.get("stopped") is None and report.get("paused_until") is None and \
                self.remind is None and self.down_after == self.up_after == 1 and \
                device.rare is None and not self._pauses:  # (no roster entry, stop or pause)
            # the usual case, the short way: fresh, so its status is its state
            new = device.health = _STATE_OF_STATUS[device.status]
            device.due = seen + device.late_after
            return new
        device.stopped = report.get("stopped") is True
        until = report.get("paused_until")
        if type(until) in (int, float) and until > now:  # maintenance the device announces
            device.paused_until = float(min(until, now + self.max_interval))
            device.pause_reason = _report_text(report.get("pause_reason") or "") or None
        elif device.paused_until:  # a report without it: the maintenance is over
            device.paused_until, device.pause_reason = 0.0, None
        raw = _STATE_OF_STATUS[device.status]
        device.health = raw if self.down_after == self.up_after == 1 and device.listed \
            is None else self._damped(device, raw)
        if device.stopped or device.paused_until or self._pauses or self.remind:
            new, device.due = self._state_now(device, now)
        else:  # fresh, so its status (damped) is its state
            new, device.due = device.health, seen + device.late_after
        return new

    def _capped_interval(self, name, host, interval):
        name, host = _report_text(name), _report_text(host)  # as they came in the report
        key = (name, host)
        if key not in self._capped and len(self._capped) < 1000:
            self._capped.add(key)
            log.warning("device %r on %r reports an interval of %gs: capped at max_interval, "
                        "%gs (logged once per device)", name, host, interval, self.max_interval)
        return self.max_interval

    def _damped(self, device, raw):
        """Flap damping: `down` only after down_after bad reports in a row (degraded until
        then), and back `up` from down or degraded only after up_after good ones."""
        last, count = device.streak or (None, 0)
        count = count + 1 if raw == last else 1
        device.streak = (raw, count)
        settings = device.listed or {}
        if raw == "down" and device.health != "down" and \
                count < settings.get("down_after", self.down_after):
            return "degraded"
        if raw == "up" and device.health in ("down", "degraded") and \
                count < settings.get("up_after", self.up_after):
            return device.health
        return raw

    def _state_now(self, device, now):
        """(state, when it may next change) of a device at `now`: paused while a pause holds
        (its own or an operator's); missing while a roster's device was never seen; stopped
        once it said so; late or silent by its age; else its status (damped)."""
        pause = device.paused_until
        if self._pauses:
            pause = max(pause, self._pauses.get(device.id, (0.0,))[0])
        if pause > now:
            return "paused", pause
        if device.health is None:
            state, due = "missing", math.inf
        elif device.stopped:
            return "stopped", math.inf
        else:
            late, silent = self._limits(device.interval, device.listed)
            age = now - device.judged_from
            if age > silent:
                state, due = "silent", math.inf if self.forget_after is None else \
                    device.judged_from + max(silent, self.forget_after)
            elif age > late:
                state, due = "late", device.judged_from + silent
            else:
                state, due = device.health, device.judged_from + late
        if self.remind is not None and state in _REMINDED_STATES:
            due = min(due, device.reminded + self.remind)
        return state, due

    def _change(self, device, new, now):
        """Device into state `new`: the old state; the change goes to the flip log too."""
        old = device.change(new, now)
        if self.remind is not None:  # the hook runs for the new state now
            device.reminded = now
        if self.history_path is not None:
            self._flips.append({"time": now, "device": device.id, "old": old, "new": new,
                                "reason": ", ".join(device.failing) or None})
            if len(self._flips) >= 10000:
                self._write_flips()
        return old

    def _refuse(self, name, host):
        """A report of one device more than max_devices: counted; logged at the first, then
        at every 1000th."""
        refused = self.counts.get("refused", 0) + 1
        if refused == 1 or refused % 1000 == 0:
            log.warning("refused a report of a new device %r on %r: already %d devices "
                        "(max_devices); %d refused so far", name, host, self.max_devices, refused)
        return "refused"

    def _skewed(self, device, behind):
        """A live report whose timestamp is far from its arrival: counted, logged once per
        device."""
        self.counts["skewed"] += 1
        if not device.skewed:
            device.skewed = True
            log.warning("device %r: its reports' timestamps are %.0fs %s their arrival (a clock "
                        "off?); their arrival times are used instead", device.id, abs(behind),
                        "behind" if behind > 0 else "ahead of")

    def check_ages(self, now=None):
        """Turn devices late or silent whose reports stopped, out of a pause that ended, or
        forgotten when silent for forget_after; remind of those still down, silent or missing
        (with `remind`); the changes, announced. Nothing changes while the watcher is blind."""
        if self._blind_since is not None:
            return 0
        now = self.wall_clock() if now is None else now
        if now < self._earliest_due and not self._soon:  # none is due
            return 0
        changes, forgotten = [], []
        with self._lock:
            soon = self._soon
            if now >= self._earliest_due:
                # A look at every device (100,000: 5 ms): those due within ten ticks are kept,
                # and the next ticks look at them alone (in a fleet some device is due nearly
                # every second: this look comes once per ten ticks, not every tick)
                horizon, earliest, soon = now + _SOON_TICKS * self.tick, math.inf, []
                for device in self._devices.values():
                    when = device.due
                    if when <= horizon:
                        soon.append(device)
                    elif when < earliest:
                        earliest = when
                self._soon, self._earliest_due = soon, earliest
            devices = self._devices
            for device in soon:
                if device.due > now or devices.get(device.key) is not device:
                    continue  # not due, or forgotten meanwhile
                new, device.due = self._state_now(device, now)
                if new == "silent" and self.forget_after is not None and \
                        now - device.judged_from > max(self.forget_after, self._limits(
                            device.interval, device.listed)[1]):
                    forgotten.append(device.key)
                elif new != device.state:
                    changes.append((device, self._change(device, new, now), new, None, now))
                elif self.remind is not None and new in _REMINDED_STATES and \
                        now - device.reminded >= self.remind:
                    device.reminded = now
                    changes.append((device, new, new, None, now))
            for key in forgotten:
                del self._devices[key]
            self._dirty = self._dirty or bool(changes or forgotten)
        if forgotten:
            self.counts["forgotten"] += len(forgotten)
            log.info("forgot %d device(s) silent for more than %gs", len(forgotten),
                     self.forget_after)
        for change in self._roll_up(changes, now):
            self._fire(*change)
        return len(changes)

    def _roll_up(self, changes, now):
        """The changes to announce: when every device of a host (two or more) went silent
        in the same look, one change for the host ("*@host", with its devices listed), not
        one per device; its devices are marked rolled_up."""
        silent = collections.defaultdict(list)
        for change in changes:
            if change[2] == "silent" and change[1] != "silent":
                silent[change[0].host].append(change[0])
        hosts = {host for host, devices in silent.items() if len(devices) >= 2 and host}
        if not hosts:
            return changes
        with self._lock:
            on_host = collections.Counter(device.host for device in self._devices.values()
                                          if device.host in hosts)
        hosts = {host for host in hosts if on_host[host] == len(silent[host])}
        if not hosts:
            return changes
        kept = [change for change in changes if not (change[2] == "silent" and change[
            0].host in hosts and change[1] != "silent")]
        for host in sorted(hosts):
            devices = silent[host]
            for device in devices:
                device.rolled_up = True
            kept.append((_HostEvent(host, devices), None, "silent", None, now))
        return kept

    def _fire(self, device, old, new, report, now):
        """Announce a change: on_view_change always; on_change only in the leader of a
        standby group (a standby keeps the change until the leader says it handled it, and
        runs it itself if it takes over first)."""
        snapshot = self._snapshot(device, now)
        if old == new:
            snapshot["reminder"] = True  # still in that state after `remind` seconds
        _call(self.on_view_change, snapshot, old, new, report)
        if not self.on_change:
            return
        if self._leader is False or (self._leader and not self._leading_now()):
            handled = self._handled.get(snapshot["device"])
            if handled is None or handled[0] != new or now - handled[1] > _PENDING_FOR:
                self._pending[snapshot["device"]] = (snapshot, old, new, report, now)
            return
        if self._leader:
            self._announce_handled(snapshot["device"], old, new, now)
        _call(self.on_change, snapshot, old, new, report)

    def _apply_delivery(self, delivery):
        properties = delivery.properties or {}
        kind = properties.get("type")
        if kind == _HANDLED_TYPE:
            self._take_notice(delivery.body)
            return
        if kind == _CONTROL_TYPE:
            self._take_control(delivery.body)
            return
        if delivery.body is None:
            properties = dict(properties, body_size=delivery.body_size)
        self.apply(delivery.body, properties)
        if self._backlog:
            self._backlog -= 1

    # -- a standby group: one leader runs the hooks ---------------------------------

    @property
    def leader(self):
        """True while it leads its standby group (or has none), False while it stands by."""
        return self._leader is not False

    def _leading_now(self):
        """Is its leadership current: its link to the broker alive and heard from lately? A
        paused leader woken up must not run hooks before it learns it lost the lead."""
        connection = self._connection
        return connection is not None and connection.is_open and (
            not connection.heartbeat or connection.quiet_for() <= connection.heartbeat)

    def _try_leadership(self, connection, deadline):
        """Declare the group's exclusive queue: only one connection can hold it, and the
        broker deletes it when that connection dies. RESOURCE_LOCKED: another leads."""
        self._next_leader_try = time.monotonic() + _LEADER_RETRY
        if not connection.channel_is_open(_LEADER_CHANNEL):
            connection.open_channel(_LEADER_CHANNEL, deadline, confirm=False)
        try:
            connection.call(_LEADER_CHANNEL, "Queue.Declare", deadline,
                            queue=f"pihace.watch.leader.{self.standby_group}", exclusive=True,
                            auto_delete=True)
        except ChannelClosed as exc:
            if exc.reply_code != 405:  # RESOURCE_LOCKED: held by the leader's connection
                raise
            return
        self._leader = True
        log.warning("leading the standby group %r: this watcher runs the hooks now",
                    self.standby_group)
        self._run_pending()

    def _run_pending(self):
        """The changes a standby saw that no leader said it handled: run now, once."""
        pending, self._pending = self._pending, {}
        now = self.wall_clock()
        for snapshot, old, new, report, when in pending.values():
            if now - when <= _PENDING_FOR:
                self._announce_handled(snapshot["device"], old, new, when)
                _call(self.on_change, snapshot, old, new, report)

    def _announce_handled(self, device_id, old, new, when):
        """Tell the group's standbys that this change is handled (on the reports' exchange,
        as a message of its own type that every watcher's queue receives)."""
        import json  # here, not at the top: slow to import (see the imports)

        connection = self._connection
        body = json.dumps({"group": self.standby_group, "device": device_id, "old": old,
                           "new": new, "at": when}).encode()
        message = _Message(body, encode_properties({"type": _HANDLED_TYPE,
                                                    "app_id": "pihace watch"}),
                           None, self.exchange, f"pihace.watch.{self.standby_group}")
        try:
            connection.publish(_LEADER_CHANNEL, [message], time.monotonic() + self.timeout)
        except (PihaceError, OSError, AttributeError) as exc:  # no connection: its hook runs
            log.warning("could not tell the standbys that the change of %s is handled: %s",
                        device_id, describe_error(exc))

    def _take_notice(self, body):
        """A leader's notice: the change it names is handled; a standby forgets it."""
        try:
            import json  # here, not at the top: slow to import (see the imports)

            notice = json.loads(body)
            if notice.get("group") != self.standby_group or self._leader:
                return
            device, new = notice["device"], notice["new"]
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
            return
        if type(device) is not str:
            return
        pending = self._pending.get(device)
        if pending is not None and pending[2] == new:
            del self._pending[device]
        else:
            self._handled[device] = (new, self.wall_clock())
        if len(self._handled) > self.max_devices:
            self._handled.clear()

    # -- what operators say: pauses, the roster -----------------------------------

    def pause(self, device_id, until, reason=None, by=None):
        """Pause a device (its id, "name@host") until `until` (wall-clock seconds): it shows
        `paused`, and no late, silent or down hook runs for it until then. Kept in the
        state file. What `pihace watch --pause` sends to every running watcher."""
        if type(device_id) is not str or not device_id:
            raise ValueError("a device id is a non-empty string (name@host)")
        until = float(_number("until", until, math.isfinite, "a finite number"))
        device_id = _report_text(device_id)
        with self._lock:
            if until <= self.wall_clock():
                self._pauses.pop(device_id, None)
            elif device_id in self._pauses or len(self._pauses) < self.max_devices:
                self._pauses[device_id] = (until, _report_text(reason or "") or None,
                                           _report_text(by or "") or None)
            for device in self._devices.values():
                if device.id == device_id:
                    device.due = self._earliest_due = -math.inf  # looked at at the next tick
            self._dirty = True
        log.warning("device %r %s", device_id, "resumed" if until <= self.wall_clock() else
                    f"paused until {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(until))}"
                    f" by {by or '?'}: {reason or 'no reason given'}")

    def _take_control(self, body):
        """An operator's message (pihace watch --pause/--resume): applied, or logged once as
        not understood."""
        try:
            import json  # here, not at the top: slow to import (see the imports)

            control = json.loads(body)
            action, device_id = control["action"], control["device"]
            until = float(control["until"]) if action == "pause" else 0.0
            if action not in ("pause", "resume"):
                raise ValueError(f"unknown action {action!r}")
            self.pause(device_id, until, control.get("reason"), control.get("by"))
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            self.counts["invalid"] += 1
            log.warning("ignored an operator's message that is not one: %s",
                        describe_error(exc))

    def set_roster(self, entries):
        """The devices expected: a list of ids ("name@host") or mappings {"device": id,
        "interval", "grace", "down_after", "up_after", "tags", "owner"} (its settings
        override the watcher's for that device). A listed device never seen is `missing`; one
        not listed is flagged unexpected (with ignore_unexpected, its reports are refused).
        Called again (on SIGHUP, say) it replaces the roster. ValueError names a bad entry."""
        roster = {}
        for index, entry in enumerate(entries if isinstance(entries, list) else [entries]):
            device_id, settings = _roster_entry(index + 1, entry)
            roster[device_id] = settings
        now = self.wall_clock()
        with self._lock:
            self._roster = roster
            known = set()
            for key, device in list(self._devices.items()):
                device_id = device.id
                known.add(device_id)
                if device.health is None and device_id not in roster:
                    del self._devices[key]  # missing, and no longer expected
                    continue
                device.listed = roster.get(device_id, False)
                device.late_after = self._limits(device.interval, device.listed)[0]
                device.due = self._earliest_due = -math.inf
            for device_id, settings in roster.items():
                if device_id in known or len(self._devices) >= self.max_devices:
                    continue
                name, _, host = device_id.rpartition("@") if "@" in device_id else (
                    device_id, "", "")
                device = Device(name, host, now)
                device.listed, device.interval = settings, settings.get(
                    "interval", self.default_interval)
                device.late_after = self._limits(device.interval, settings)[0]
                device.state, device.due = "missing", -math.inf
                self._earliest_due = -math.inf
                device.transitions = b""  # none: expected, never seen
                device.last_stamp = 0.0  # any report of it is newer
                self._devices[device.key] = device
            self._dirty = True
        log.info("roster: %d device(s) expected", len(roster))

    # -- its memory ---------------------------------------------------------------

    def _write_flips(self):
        """Append the transitions not written yet to the flip log (one JSON line each),
        rotated past _FLIPS_LIMIT bytes (one older file kept, as PATH.1)."""
        import json  # here, not at the top: slow to import (see the imports)

        flips, self._flips = self._flips, []
        if not flips or self.history_path is None:
            return
        try:
            if os.path.getsize(self.history_path) > _FLIPS_LIMIT:
                os.replace(self.history_path, f"{self.history_path}.1")
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot rotate the flip log %s: %s", _printable(self.history_path),
                        describe_error(exc))
        try:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
            with os.fdopen(os.open(self.history_path, flags, 0o600), "a") as file:
                file.write("".join(json.dumps(flip) + "\n" for flip in flips))
        except OSError as exc:
            log.warning("cannot write the flip log %s: %s", _printable(self.history_path),
                        describe_error(exc))

    def save_state(self):
        """Write the device table to state_path now (atomically, mode 0600). An OSError
        (a full disk, say) is logged and the watcher goes on: it is tried again later."""
        if self.state_path is None:
            return
        saver = self._saver
        if saver is not None:
            saver.join()
        self._write_flips()
        self._save()

    def _save(self):
        started = time.monotonic()
        try:
            self._write_state()
        finally:  # at most every state_every seconds, and never more than 1 % of the time: a
            # large fleet's file (100,000 devices: about 21 MB) takes half a second to write
            self._next_save = time.monotonic() + max(self.state_every,
                                                     100 * (time.monotonic() - started))

    def _write_state(self):
        import json  # here, not at the top: slow to import (see the imports)

        with self._lock:
            devices = list(self._devices.values())
            pauses = {device: list(pause) for device, pause in self._pauses.items()}
            self._dirty = False
        encode = json.JSONEncoder(separators=(",", ":")).encode
        head = encode({"pihace_watch_state": _STATE_FORMAT, "written": self.wall_clock(),
                       "id_secret": self._id_secret.hex(),
                       "pauses": pauses})

        def parts():
            # Encoded a thousand devices at a time, each thousand under the lock, and written
            # as they are (100,000 devices: 30 MB never held whole, and reports applied in
            # between: one json.dumps of the whole table would hold the GIL, and every
            # change, for a second). A device per line, which read_state reads line by line.
            yield f'{head[:-1]},"devices":[\n'.encode()
            for start in range(0, len(devices), 1000):
                if start:
                    _let_waiters_in()
                    with self._no_page_made:  # (at most a second at each turn)
                        self._no_page_made.wait_for(lambda: not self._pages_made, 1.0)
                with self._lock, _no_collection():
                    text = ",\n".join([encode(device.record())
                                       for device in devices[start:start + 1000]])
                yield (f",\n{text}" if start else text).encode()
            yield b"\n]}\n"
        try:
            write_atomically(self.state_path, parts())
        except OSError as exc:
            self._dirty = True
            log.warning("cannot write the state file %s: %s", _printable(self.state_path),
                        describe_error(exc))

    def _save_when_due(self):
        """The state file written in a thread of its own, so that reports go on being
        applied while it is: once due, and when the last writing is over."""
        if self._dirty and self.state_path is not None and time.monotonic() >= self._next_save:
            self._write_flips()
            self._next_save = math.inf  # _save sets the next time when it is done
            self._saver = threading.Thread(target=self._save, daemon=True,
                                           name="pihace-watch-save")
            self._saver.start()

    def _restore(self, document):
        """The devices a state file remembers: as they were, their ages counting on (a device
        whose time ran out meanwhile turns late or silent at the next look, with its hook)."""
        if document is None:
            return
        entries = document.get("devices")
        restored, skipped = 0, 0
        pauses = document.get("pauses")
        for device_id, pause in (pauses.items() if type(pauses) is dict else ()):
            try:
                until, reason, by = pause
                if type(device_id) is str and math.isfinite(float(until)):
                    self._pauses[_report_text(device_id)] = (
                        float(until), _report_text(reason) if reason else None,
                        _report_text(by) if by else None)
            except (TypeError, ValueError):
                skipped += 1
        # a list (a file of the one-line layout), or read_state's iterator over the lines;
        # anything else the file may hold there makes no device
        for entry in entries if type(entries) is list or hasattr(entries, "__next__") else ():
            device = self._device_from_record(entry)
            if device is None or len(self._devices) >= self.max_devices:
                skipped += 1
                continue
            self._devices[device.key] = device
            self._earliest_due = -math.inf  # each looked at again at the first tick
            restored += 1
        log.info("restored %d device(s) from %s%s", restored, _printable(self.state_path),
                 f" ({skipped} entries not usable, skipped)" if skipped else "")

    def _device_from_record(self, entry):
        """A Device from a state file's entry, or None when the entry does not make one."""
        try:
            name, host, state = entry["name"], entry["host"], entry["state"]
            if type(name) is not str or type(host) is not str or state not in DEVICE_STATES \
                    or entry["status"] not in _STATE_OF_STATUS or state == "missing":
                return None
            # (format 2 leaves out since, last_stamp, health and transitions when they are
            # as Device.record says)
            first_seen, last_seen = float(entry["first_seen"]), float(entry["last_seen"])
            numbers = [float(entry.get("since", first_seen)), first_seen, last_seen,
                       float(entry.get("last_stamp", last_seen)), float(entry["interval"])]
            if not all(math.isfinite(number) for number in numbers) or numbers[4] <= 0:
                return None
            device = Device(_report_text(name), _report_text(host), numbers[1])
            # the states and statuses as the shared strs the watcher uses (not 100,000 copies)
            device.state, device.status = _STATE_OF_TEXT[state], _STATUS_TEXT[entry["status"]]
            device.since, _, device.last_seen, device.last_stamp, interval = numbers
            if device.last_stamp == device.last_seen:
                device.last_stamp = device.last_seen
            device.judged_from = device.last_seen
            device.interval, device.late_after = self._interval_limits(interval, None)
            device.reports = int(entry["reports"])
            rate = entry.get("rate")
            if rate:
                rate = _report_text(rate, 20)
                device.rate = self._rates.setdefault(rate, rate) if len(
                    self._rates) < 1000 else rate
            device.failing = tuple(_report_text(key) for key in entry.get("failing", ())
                                   [:_FAILING_LIMIT])
            newest = entry.get("id")  # the newest id's key (format 2), or ids themselves (1)
            ids = [bytes.fromhex(newest)] if type(newest) is str and len(newest) == 16 else [
                self._id_key(key) for key in entry.get("ids", ()) if type(key) is str]
            if ids and self.dedup_window:
                device.ids = b"".join(ids[-self.dedup_window:])
            transitions = [
                (float(when), old and _STATE_OF_TEXT[old], _STATE_OF_TEXT[new])
                for when, old, new in entry.get("transitions", ())[-_TRANSITIONS_KEPT:]
                if math.isfinite(float(when)) and (old is None or old in DEVICE_STATES)
                and new in DEVICE_STATES]
            if "transitions" in entry and transitions != [  # else implied: its first state
                    (device.first_seen, None, device.state)]:
                device.transitions = _packed_transitions(transitions)
            health = entry.get("health")
            device.health = _STATE_OF_TEXT[health] if health in ("up", "degraded", "down") \
                else _STATE_OF_STATUS[device.status]
            streak = entry.get("streak")
            if type(streak) is list and len(streak) == 2 and type(streak[1]) is int:
                device.streak = (streak[0], streak[1])
            device.stopped = entry.get("stopped") is True
            paused_until = float(entry.get("paused_until") or 0.0)
            if math.isfinite(paused_until):
                device.paused_until = paused_until
                reason = entry.get("pause_reason")
                device.pause_reason = _report_text(reason) if reason else None
        except (KeyError, TypeError, ValueError, OverflowError):
            return None
        device.due = -math.inf  # its state is looked at again at the first tick
        return device

    # -- its sight ----------------------------------------------------------------

    def _lose_sight(self, why, expected=False):
        """From now on it cannot see: states are kept, marked stale, and aged no more.
        Logged as a warning unless `expected` (before the first connection, after a stop)."""
        if self._blind_since is None:
            self._blind_since = self.wall_clock()
            (log.info if expected else log.warning)("the fleet's view is stale: %s", why)
        self._blind_why = why

    def _regain_sight(self):
        """It sees again: the time it was blind does not count against any device."""
        if self._blind_since is None:
            return
        now = self.wall_clock()
        blind_from, self._blind_since, self._blind_why = self._blind_since, None, None
        self._connected_since = now
        with self._lock:
            for device in self._devices.values():
                if device.judged_from < now:
                    shift = now - max(blind_from, device.judged_from)
                    device.judged_from += shift
                    device.due += shift
        log.info("watching again: the view is current (blind for %.0fs)", now - blind_from)
        if self._leader and self._pending:
            self._run_pending()

    # -- the connection ---------------------------------------------------------

    def _connect(self, deadline):
        """Connect (nodes in a random order, the one lost last tried last), declare what
        it needs and start consuming; stop() interrupts every wait for the broker."""
        connection = self._open_connection(deadline, self.timeout, time.monotonic)
        channel = self._channel
        connection.open_channel(channel, deadline, confirm=False)
        queue = self.queue_name
        if self.declare:
            self._declare_exchange(connection, deadline)
            queue = self._declare_queue(connection, deadline, queue)
            if self.exchange:
                connection.call(channel, "Queue.Bind", deadline, queue=queue,
                                exchange=self.exchange, routing_key=self.binding_key)
        self._queue = queue
        self._backlog = self._look_at_queue(connection, deadline)
        connection.consume(channel, queue, deadline, prefetch=self.prefetch,
                           max_body_size=self.max_report_size)
        log.info("watching queue %s on %s", _printable(repr(queue)), self.parameters.safe_url)
        if self.standby_group is not None:
            self._try_leadership(connection, deadline)
        return connection

    def _look_at_queue(self, connection, deadline):
        """A passive declare of its queue: a ChannelClosed (404) when the queue is gone, even
        if the broker sent no cancel; a warning when another consumer shares it (each would
        see only part of the reports); blind when reports wait there but none comes. The
        number of reports waiting."""
        reply = connection.call(self._channel, "Queue.Declare", deadline, queue=self._queue,
                                passive=True)
        waiting = reply.args["message_count"]
        others = reply.args["consumer_count"] - (1 if self._checked_before else 0)
        if others > 0 and others + 1 != self._consumers:
            log.warning("%d other consumer(s) share the queue %s: each of them takes reports "
                        "this watcher will not see (give each watcher a queue of its own, bound "
                        "to the reports' exchange)", others, _printable(repr(self._queue)))
        self._consumers = max(1, others + 1)
        self._stuck = bool(waiting and self._checked_before and not self._delivered_since_check
                           and not self._unacked)
        if self._stuck:
            self._lose_sight(f"{waiting} report(s) wait in the queue but none comes to this "
                             "watcher")
        self._checked_before, self._delivered_since_check = True, False
        self._next_queue_check = time.monotonic() + _QUEUE_CHECK
        return waiting

    def _drop(self):
        if self._leader:
            self._leader = False
            log.warning("no longer leading the standby group %r (connection lost)",
                        self.standby_group)
        connection, self._connection = self._connection, None
        self._unacked = 0  # what it applied and did not acknowledge comes again
        self._next_queue_check, self._checked_before, self._stuck = -math.inf, False, False
        if connection is not None:
            connection.abort()

    # -- the loop ---------------------------------------------------------------

    def run(self, stop_event=None, *, duration=None, idle=None):
        """Consume and apply reports until stop(), stop_event or Ctrl-C; or for at most
        `duration` seconds; or, given `idle`, until no report came for `idle` seconds
        (what --once uses to read what is waiting). Returns True when it could read the
        queue (it connected and consumed) at least once. An error that is not the
        broker's or the network's is a bug: it ends run() and is raised."""
        monotonic = time.monotonic
        ends = math.inf if duration is None else monotonic() + _seconds("duration", duration)
        consumed, quiet_since = False, None
        backoff = Backoff(spread=1.0)
        self._wakeup = self._interrupt = Wakeup()
        self._lose_sight("not connected yet", expected=True)
        try:
            while not self._stopped(stop_event) and monotonic() < ends:
                if self._connection is None:
                    if not self._open(backoff, ends):
                        continue
                    consumed, quiet_since = True, monotonic()
                wait = _ACK_PAUSE if self._unacked else min(
                    self.tick, 1.0 if stop_event is not None else self.tick,
                    max(0.0, ends - monotonic()))
                if idle is not None:  # not a tick longer than `idle` asks for
                    wait = min(wait, max(0.0, quiet_since + idle - monotonic()))
                try:
                    came = self._consume(wait)
                    if came:
                        quiet_since = monotonic()
                    if 0 < came < self._ack_every and not self._backlog:
                        # A few reports, as a fleet sends them, one at a time: let more come
                        # before the next look, which costs more than the few reports it
                        # finds (100,000 devices, 1,700 reports/s: 90 us of CPU per report
                        # without it, 24 so; a change is seen 20 ms later at most). Not while
                        # it reads what waited in the queue (_backlog, as the broker counts
                        # it), whose prefetch it would hold to one look per linger.
                        self._wakeup.wait(_LINGER)
                except Interrupted:
                    raise
                except (PihaceError, OSError) as exc:
                    self.last_error = describe_error(exc, self.parameters.safe_url)
                    log.warning("connection lost, opening a new one: %s", self.last_error)
                    self._drop()
                    self._lose_sight(f"connection lost: {self.last_error}")
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
            if self._blind_since is None:
                self.check_ages()  # what it could see until the end
            self._close()  # its view stays as current as it was when it stopped
            if self._dirty and self.state_path is not None:
                self.save_state()  # after the save under way, if one is
            elif self._saver is not None:
                self._saver.join()  # a file half written would be left behind
            self._write_flips()
            wakeup, self._wakeup = self._wakeup, None
            self._interrupt = None
            wakeup.close()
            self._stop_requested = False
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
            self._lose_sight(f"cannot connect: {reason}")
            if not backoff.failures:
                log.warning("cannot watch: %s; trying again", reason)
            self._wakeup.wait(min(backoff.failed(), max(0.0, ends - time.monotonic())))
            return False
        if backoff.failures:
            log.warning("watching again after %d failed attempt(s)", backoff.failures)
        backoff.succeeded()
        self._last_turn = time.monotonic()
        self._regain_sight()
        self._next_tick = time.monotonic() + self.tick + 1.0  # the backlog comes first
        return True

    def _consume(self, wait):
        """Apply the reports that come within `wait` seconds: how many came.

        Each is acknowledged once applied (at-least-once): one Ack (multiple) for each
        half of the prefetch, and one for what came before a pause. A broker silent for
        more than a heartbeat makes the view stale until it speaks again."""
        connection, monotonic = self._connection, time.monotonic
        now = monotonic()
        if self._leader and connection.heartbeat and now - self._last_turn > connection.heartbeat:
            # Paused (SIGSTOP, a frozen VM) for longer than a heartbeat: the broker has
            # likely dropped this connection and another watcher leads. What waited in the
            # socket meanwhile must not run hooks: a new connection tries the lead again.
            raise ConnectionResetError(f"this watcher did not run for {now - self._last_turn:.0f}"
                                       "s: its lead of the standby group may be gone")
        deliveries = connection.deliveries(wait, monotonic() + self.timeout)
        self._last_turn, waited = monotonic(), monotonic() - now
        if self._leader and connection.heartbeat and waited > wait + connection.heartbeat:
            raise ConnectionResetError(f"this watcher did not run for {waited - wait:.0f}s: "
                                       "its lead of the standby group may be gone")
        for delivery in deliveries:
            self._apply_delivery(delivery)
            self._unacked += 1
            if self._unacked >= self._ack_every:
                connection.ack(self._channel, delivery.delivery_tag,
                               monotonic() + self.timeout, multiple=True)
                self._unacked = 0
        if deliveries:
            self._last_tag = deliveries[-1].delivery_tag
            self._last_message = self.wall_clock()
            self._delivered_since_check = True
        elif self._unacked:
            connection.ack(self._channel, self._last_tag, monotonic() + self.timeout,
                           multiple=True)
            self._unacked = 0
        if deliveries:
            self._stuck = False
        heartbeat = connection.heartbeat
        if heartbeat and connection.quiet_for() > heartbeat:
            self._lose_sight(f"the broker sent nothing for {connection.quiet_for():.0f}s "
                             f"(heartbeat {heartbeat}s)")
            return len(deliveries)
        if monotonic() >= self._next_queue_check:
            waiting = self._look_at_queue(connection, monotonic() + self.timeout)
            # ten prefetches or more wait there: a backlog now (what a scrape or a save that
            # held this thread for half a second leaves, 800 reports of a fleet of 100,000,
            # is read as a trickle's reports are)
            if waiting >= 10 * max(1, self.prefetch):
                self._backlog = max(self._backlog, waiting)
        if self._leader is False and monotonic() >= self._next_leader_try:
            self._try_leadership(connection, monotonic() + self.timeout)
        if self._blind_since is not None and not self._stuck:
            self._regain_sight()
        return len(deliveries)

    def _tick(self):
        """Look at the devices' ages once per tick (check_ages does nothing while the
        watcher is blind: it cannot tell a silent device from its own blindness)."""
        now = time.monotonic()
        if now >= self._next_tick:
            self._next_tick = now + self.tick
            self.check_ages()
            self._save_when_due()

    def _close(self):
        if self._leader:
            self._leader = False
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
