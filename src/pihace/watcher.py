"""watcher: consuming the fleet's reports, one state per device, hooks on changes."""

from __future__ import annotations

import collections
import itertools
import math
import threading
import time

from .header import log
from .errors import Interrupted, PihaceError
from .helpers import _CONTROL_ESCAPES, _number, _printable, _seconds, _text, describe_error
from .transport import Backoff, Wakeup
from .client import _AMQPClient


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


class Watcher(_AMQPClient):
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

    def __init__(self, amqp_url="amqp://guest:guest@localhost:5672/",
                 queue_name="pihace.healthcheck", *, exchange="", exchange_type=None,
                 binding_key="#", declare=True, queue_arguments=None, prefetch=100,
                 default_interval=60.0, grace=None, silent_grace=None, silent_limit=None,
                 on_change=None, tick=1.0, max_report_size=1 << 20, dedup_window=100000,
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
        callbacks = on_change if isinstance(on_change, (list, tuple)) else [on_change]
        if not all(callable(callback) for callback in callbacks if callback is not None):
            raise TypeError("on_change must be a callable or a list of callables")
        self.on_change = [callback for callback in callbacks if callback is not None]
        self.queue_name, self.binding_key, self.declare = queue_name, binding_key, declare
        self.prefetch, self.max_report_size = prefetch, max_report_size
        self._ack_every = max(1, prefetch // 2) if prefetch else 50
        self.wall_clock = wall_clock  # seconds since 1970: reports' timestamps are on it
        self.counts = collections.Counter()  # applied, duplicate, invalid, stale
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
        self._unacked, self._last_tag = 0, None  # applied, not acknowledged yet (acks batch)
        self._next_tick = -math.inf

    def __repr__(self):
        return f"<Watcher {self.parameters.safe_url} queue={self.queue_name!r}>"

    # -- what it knows ----------------------------------------------------------

    @property
    def devices(self):
        """A snapshot: {device id: dict of name, host, state, status, last_seen, age,
        interval, reports, rate, failing}."""
        now = self.wall_clock()
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
        change = self._update(report, properties, self.wall_clock() if now is None else now)
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
        now = self.wall_clock() if now is None else now
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
        connection.consume(channel, queue, deadline, prefetch=self.prefetch,
                           max_body_size=self.max_report_size)
        log.info("watching queue %s on %s", _printable(repr(queue)), self.parameters.safe_url)
        return connection

    def _drop(self):
        connection, self._connection = self._connection, None
        self._unacked = 0  # what it applied and did not acknowledge comes again
        if connection is not None:
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
        self._wakeup = self._interrupt = Wakeup()
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
            self._interrupt = None
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
