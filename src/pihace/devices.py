"""devices: what the watcher knows of each device (Device), its states, worst first, the text
of reports made safe where it enters, a roster's entries, and a host's roll-up event."""

from __future__ import annotations

import math
import struct

from .helpers import _number, _printable, _seconds, _text
from .formats import _STATUSES, _prometheus_label_value


# The states of a device, worst first (the live table's order): `missing` is a device of the
# roster never seen; `paused` one in maintenance (announced by itself or set by an operator);
# `stopped` one whose pusher said it stopped on purpose.
DEVICE_STATES = ("silent", "missing", "down", "late", "degraded", "paused", "stopped", "up")
_STATE_RANK = {state: index for index, state in enumerate(DEVICE_STATES)}
_STATE_OF_TEXT = {state: state for state in DEVICE_STATES}  # one str of each, shared
_REMINDED_STATES = ("down", "silent", "missing")  # --remind re-runs the hook while in these
_STATE_OF_STATUS = dict(zip(_STATUSES, ("up", "degraded", "down")))
_STATUS_TEXT = {status: status for status in _STATUSES}  # one str of each, shared
_NAME_LIMIT = 200  # characters of a device's name or host that are kept
_FAILING_LIMIT = 20  # names of failing checks kept per device
_TRANSITIONS_KEPT = 100  # per device: its recent changes of state (its uptime comes from them)
_UPTIME_WINDOWS = (("24h", 86400.0), ("7d", 7 * 86400.0))
# A device's changes of state, as Device.transitions keeps them: 10 bytes each (time, old
# state, new state: indexes of _TRANSITION_STATES, None the state before the first), in one
# bytes the collector never walks. A list of (time, old, new) tuples took 7 KB for a full
# history, these 1 KB: 100,000 devices watched long enough to have one, 100 MB, not 700.
_TRANSITION = struct.Struct("<dBB")
_TRANSITION_STATES = (None,) + DEVICE_STATES
_TRANSITION_CODE = {state: code for code, state in enumerate(_TRANSITION_STATES)}
_TRANSITIONS_BYTES = _TRANSITIONS_KEPT * _TRANSITION.size
# the codes of the states not counted in an uptime (not watched, or on purpose), and of up
_UNWATCHED_CODES = frozenset(_TRANSITION_CODE[state] for state in
                             (None, "paused", "stopped", "missing"))
_UP_CODE = _TRANSITION_CODE["up"]


def _packed_transitions(transitions):
    """Changes of state, (time, old, new) each (at most _TRANSITIONS_KEPT), as
    Device.transitions keeps them."""
    code, pack = _TRANSITION_CODE, _TRANSITION.pack
    return b"".join([pack(when, code[old], code[new]) for when, old, new in transitions])


def _report_text(value, limit=_NAME_LIMIT):
    """Text from a report, made safe once where it enters, so that every output can trust
    it: a string of at most `limit` characters, control and bidi characters and lone
    surrogates written as escapes."""
    text = value if type(value) is str else "" if value is None else _text(value)
    if not (text.isascii() and text.isprintable()):
        text = _printable(text)
    return text if len(text) <= limit else text[:limit] + "..."


def _metric_labels(device_id, name, host):
    """(device, name and host labels; the device label alone) of Prometheus' text."""
    device = f'device="{_prometheus_label_value(device_id)}"'
    return (f'{device},name="{_prometheus_label_value(name)}",'
            f'host="{_prometheus_label_value(host)}"', device)


def _plain_labels(name, host):
    """True when a device's labels need no escape: its texts were made safe where they
    entered (_report_text), so only a backslash or a double quote would need one."""
    return not ("\\" in name or '"' in name or "\\" in host or '"' in host)


def _device_key(name, host):
    """A device's key in the watcher's table (Device.key): its name and host, made safe."""
    return f"{name}\0{host}"


def _id_keys(secret):
    """The function that makes a message id (str, bytes or int) the 8 bytes a device's `ids`
    keeps: its BLAKE2b digest keyed with `secret` (16 random bytes the state file keeps, so
    that no producer can choose ids that collide, and a key means the same after a restart;
    a window of 32 ids takes 256 bytes)."""
    import hashlib  # here, not at the top: only the watcher needs it

    keyed = hashlib.blake2b(digest_size=8, key=secret)

    def id_key(message_id):
        digest = keyed.copy()
        digest.update(message_id.encode("utf-8", "surrogatepass") if type(message_id) is str
                      else message_id if type(message_id) is bytes else b"%d" % message_id)
        return digest.digest()
    return id_key


_ROSTER_KEYS = {"device", "interval", "grace", "down_after", "up_after", "tags", "owner"}


def _roster_entry(number, entry):
    """(device id, settings) of a roster's entry: an id, or a mapping; ValueError names a
    bad one by its number."""
    if isinstance(entry, str):
        entry = {"device": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("device"), str) or \
            not entry["device"]:
        raise ValueError(f"roster entry {number}: a device id (name@host) or a mapping with a "
                         f"'device' key, got {_printable(repr(entry))[:80]}")
    where = f"roster entry {number} ({_printable(entry['device'])[:80]})"
    unknown = sorted(map(str, set(entry) - _ROSTER_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {_printable(', '.join(unknown))[:80]}; the "
                         f"keys are {', '.join(sorted(_ROSTER_KEYS))}")
    settings = {}
    for key in ("interval", "grace"):
        if key in entry:
            settings[key] = _seconds(f"{where}: {key}", entry[key])
    for key in ("down_after", "up_after"):
        if key in entry:
            settings[key] = _number(f"{where}: {key}", entry[key], lambda v: v >= 1,
                                    "an integer >= 1", int)
    tags = entry.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        raise ValueError(f"{where}: tags must be a list of strings")
    settings["tags"] = [_report_text(tag) for tag in tags]
    if entry.get("owner") is not None:
        if not isinstance(entry["owner"], str):
            raise ValueError(f"{where}: owner must be a string")
        settings["owner"] = _report_text(entry["owner"])
    return _report_text(entry["device"]), settings


class _HostEvent:
    """A host all of whose devices went silent at once: one change, announced as a device
    "*@host" whose `devices` are theirs."""

    paused_until, listed = 0.0, None  # what Watcher._snapshot asks of a device

    def __init__(self, host, devices):
        self.host, self.devices = host, devices

    def uptimes(self, now):
        return None, None

    @property
    def id(self):
        return f"*@{self.host}"

    def snapshot(self, now, stale=False):
        last_seen = max(device.last_seen for device in self.devices)
        return {"device": self.id, "name": "*", "host": self.host, "state": "silent",
                "since": now, "status": None,
                "first_seen": min(device.first_seen for device in self.devices),
                "last_seen": last_seen, "age": max(0.0, now - last_seen),
                "interval": max(device.interval for device in self.devices),
                "reports": sum(device.reports for device in self.devices), "rate": None,
                "failing": [], "stale": stale, "transitions": [], "paused_until": None,
                "pause_reason": None, "unexpected": False, "rolled_up": True,
                "devices": sorted(device.id for device in self.devices)}


class _RareFields:
    """What few devices have (a label that needs escapes, a pause, a roster's settings, a
    stopped pusher...): one object for those that do, none for the others (64 bytes less
    per device: 100,000 devices, 6 MB). Device's properties of the same names read them."""

    __slots__ = ("label", "skewed", "stopped", "paused_until", "pause_reason", "reminded",
                 "listed", "rolled_up", "streak")
    DEFAULTS = {"label": None, "skewed": False, "stopped": False, "paused_until": 0.0,
                "pause_reason": None, "reminded": 0.0, "listed": None, "rolled_up": False,
                "streak": 0}

    def __init__(self):
        for name, default in self.DEFAULTS.items():
            setattr(self, name, default)


def _rare_field(name, doc):
    """A Device attribute kept in its _RareFields, made on the first write of a value that
    is not the default."""
    default = _RareFields.DEFAULTS[name]

    def read(device):
        rare = device.rare
        return default if rare is None else getattr(rare, name)

    def write(device, value):
        rare = device.rare
        if rare is None:
            if type(value) is type(default) and value == default:
                return
            rare = device.rare = _RareFields()
        setattr(rare, name, value)

    return property(read, write, doc=doc)


class Device:
    """What the watcher knows of one device (a component name on a host).

    `last_seen` is wall-clock time (seconds since 1970) of its newest report: the
    report's AMQP timestamp, never later than its arrival (its arrival, when the
    device's clock is off by more than its grace). `state` is one of DEVICE_STATES,
    since `since`; `status` the newest report's; `first_seen` when it was first seen.
    """

    __slots__ = ("key", "state", "since", "status", "first_seen", "last_seen",
                 "last_stamp", "judged_from", "interval", "late_after", "reports", "rate",
                 "failing", "due", "ids", "transitions", "health", "rare")

    # its Prometheus labels when they are not device="name@host",name=...,host=... as they
    # are (a text that needs escapes, or no host): made once; else None (no 300 bytes per
    # device kept for them)
    label = _rare_field("label", "its own Prometheus labels, or None")
    skewed = _rare_field("skewed", "its clock was seen off by more than its grace")
    stopped = _rare_field("stopped", "its pusher said it stopped on purpose")
    paused_until = _rare_field("paused_until", "the end of the maintenance it announced, or 0")
    pause_reason = _rare_field("pause_reason", "why it is paused, or None")
    reminded = _rare_field("reminded", "when the hook last ran for its state (--remind only)")
    listed = _rare_field("listed", "in the roster: its settings (False: not listed); None "
                         "when there is no roster")
    rolled_up = _rare_field("rolled_up", "went silent with every device of its host: one "
                            "event for all")
    streak = _rare_field("streak", "(state, count): its newest reports' state and how many "
                         "in a row said it, for flap damping; 0 before any")

    def __init__(self, name, host, now):
        # its name and host as one str, "name\0host", which is its key in the watcher's
        # table too (one str, not two and a tuple: 100,000 devices, 11 MB): texts made safe
        # where they entered (_report_text) hold no NUL, so the split is never ambiguous
        self.key, self.rare = _device_key(name, host), None
        if not (host and _plain_labels(name, host)):
            self.label = _metric_labels(self.id, name, host)
        self.state = self.status = self.rate = None
        self.since = self.first_seen = now
        self.last_seen = self.last_stamp = self.judged_from = now
        self.interval = self.late_after = 0.0
        self.reports, self.failing = 0, ()
        self.due = math.inf  # when its age next changes its state
        # its newest message ids (duplicates: at most the watcher's dedup_window) as one
        # bytes of 8 per id (_id_keys; 32 id strings would take 3 KB: 300 MB for 100,000
        # devices); the state file keeps the newest (what a restart may deliver again)
        self.ids = b""
        # its changes of state, (time, old, new), the newest _TRANSITIONS_KEPT: one bytes of
        # _TRANSITION records (history() reads them; b"" for a roster's device never seen);
        # or () while it is in its first state, since it was first seen (the usual case; that
        # first change, implied, becomes the first record at the second)
        self.transitions = ()
        self.health = None  # its status's state, damped (see streak)

    def change(self, new, now):
        """Into state `new` at `now`: the change, to announce."""
        old, code = self.state, _TRANSITION_CODE
        if old is not None:
            transitions = self.transitions
            if type(transitions) is tuple:  # its second state: the first, implied, recorded
                transitions = _TRANSITION.pack(self.first_seen, code[None], code[old])
            transitions += _TRANSITION.pack(now, code[old], code[new])
            self.transitions = transitions[-_TRANSITIONS_BYTES:]
        self.state, self.since = new, now
        self.rolled_up = False
        return old

    def remember(self, id_key, window):
        """A report's message id, applied: its key among the newest `window`."""
        ids = self.ids + id_key
        self.ids = ids if len(ids) <= 8 * window else ids[-8 * window:]

    def history(self):
        """Its changes of state, (time, old, new), the oldest first (a new list)."""
        if type(self.transitions) is tuple:  # in its first state since it was first seen
            return [(self.first_seen, None, self.state)] if self.state is not None else []
        states = _TRANSITION_STATES
        return [(when, states[old], states[new])
                for when, old, new in _TRANSITION.iter_unpack(self.transitions)]

    def uptimes(self, now):
        """Its uptime over each of _UPTIME_WINDOWS."""
        if type(self.transitions) is tuple:  # in one state since it was first seen: its
            ratio = self.uptime(now, 0.0)  # uptime is the same over every window (1, 0, None)
            return ratio, ratio
        return tuple(self.uptime(now, window) for _, window in _UPTIME_WINDOWS)

    def uptime(self, now, window):
        """The share of the last `window` seconds (since it was first seen, if later) it was
        up, out of the time it was watched and not paused or stopped; None without history."""
        if type(self.transitions) is tuple:  # in one state since it was first seen (usual)
            if self.state in ("paused", "stopped", "missing") or now <= self.first_seen:
                return None
            return 1.0 if self.state == "up" else 0.0
        start = max(now - window, self.first_seen)
        counted = up = 0.0
        end, state = now, _TRANSITION_CODE[self.state]  # (states as their codes)
        transitions, size, record = self.transitions, _TRANSITION.size, _TRANSITION.unpack_from
        for offset in range(len(transitions) - size, -1, -size):  # the newest first
            when, old, _ = record(transitions, offset)
            begin = when if when > start else start
            if begin < end and state not in _UNWATCHED_CODES:
                counted += end - begin
                if state == _UP_CODE:
                    up += end - begin
            end, state = when, old
            if when <= start:
                break
        if end > start and state not in _UNWATCHED_CODES:
            counted += end - start
            if state == _UP_CODE:
                up += end - start
        return up / counted if counted > 0 else None

    @property
    def name(self):
        key = self.key
        return key[:key.index("\0")]

    @property
    def host(self):
        key = self.key
        return key[key.index("\0") + 1:]

    @property
    def id(self):
        key = self.key
        return key.replace("\0", "@") if key[-1] != "\0" else key[:-1]

    def snapshot(self, now, stale=False):
        return {"device": self.id, "name": self.name, "host": self.host, "state": self.state,
                "since": self.since, "status": self.status, "first_seen": self.first_seen,
                "last_seen": self.last_seen, "age": max(0.0, now - self.last_seen),
                "interval": self.interval, "reports": self.reports, "rate": self.rate,
                "failing": list(self.failing), "stale": stale,
                "paused_until": self.paused_until or None, "pause_reason": self.pause_reason,
                "unexpected": self.listed is False, "rolled_up": self.rolled_up,
                "transitions": self.history()}

    def record(self):
        """What the state file keeps of it: what is not as the usual device has it (the
        usual: last_stamp is last_seen, health its status's state, still in its first
        state, since it was first seen) is left out (100,000 devices: a save in half the
        time)."""
        record = {"name": self.name, "host": self.host, "state": self.state,
                  "status": self.status, "first_seen": self.first_seen,
                  "last_seen": self.last_seen, "interval": self.interval,
                  "reports": self.reports}
        if self.since != self.first_seen:
            record["since"] = self.since
        if self.last_stamp != self.last_seen:
            record["last_stamp"] = self.last_stamp
        if self.rate is not None:
            record["rate"] = self.rate
        if self.health != _STATE_OF_STATUS.get(self.status):
            record["health"] = self.health
        if type(self.transitions) is not tuple:  # else implied: in its first state
            record["transitions"] = self.history()
        if self.failing:
            record["failing"] = self.failing
        if self.ids:
            record["id"] = self.ids[-8:].hex()  # the newest id's key (_id_keys)
        rare = self.rare
        if rare is not None:
            if rare.streak:
                record["streak"] = rare.streak
            if rare.stopped:
                record["stopped"] = True
            if rare.paused_until:
                record["paused_until"], record["pause_reason"] = rare.paused_until, \
                    rare.pause_reason
        return record
