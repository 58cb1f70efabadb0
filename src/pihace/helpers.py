"""small helpers: the one number validator, the one error description for people (masked, control
characters escaped)."""

from __future__ import annotations

import itertools
import os
import weakref

from .errors import PihaceError, PublishError, _ClosedByBroker


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
    if not value.isascii():  # a lone surrogate (from a hostile server's JSON) cannot be sent
        value = str(value.encode("utf-8", "backslashreplace"), "utf-8")
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


# ... and the characters that reorder the text around them (bidi overrides, isolates and
# marks: a name could show as another) or cannot be encoded (lone surrogates, which
# json.loads lets through): escaped too, so that every output can encode what it shows.
_CONTROL_ESCAPES.update({code: f"\\u{code:04x}" for code in itertools.chain(
    (0x061C, 0x200E, 0x200F), range(0x202A, 0x202F), range(0x2066, 0x206A),
    range(0xD800, 0xE000))})


def _printable(text):
    """Text from outside, safe for a terminal or a log line, and encodable in UTF-8: control
    and bidi characters and lone surrogates escaped."""
    shown = str(text)
    return shown if shown.isascii() and shown.isprintable() else shown.translate(_CONTROL_ESCAPES)


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
