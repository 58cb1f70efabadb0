"""small helpers: the one number validator, the one rule for URLs with a password, the one time
left until a deadline, the one way to handle SIGTERM and Ctrl-C, the one error description for
people (masked, control characters escaped)."""

from __future__ import annotations

import itertools
import os
import threading
import time
import weakref

from .errors import PihaceError, PublishError, _ClosedByBroker


def _number(name, value, valid, expected, kind=(int, float)):
    """`value` when it is a number of `kind` (never a bool) and valid(value), else a
    ValueError that names `name` (as the caller's caller knows the option: "timeout",
    "--interval", "push_config interval") and says what was `expected`."""
    if isinstance(value, bool) or not isinstance(value, kind) or not valid(value):
        raise ValueError(f"{name} must be {expected}, got {_shown(repr(value))}")
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


def _shown(value, limit=100):
    """A value from outside (a config file, an argument), for an error message: escaped and
    cut to `limit` characters."""
    text = _printable(_text(value))
    return text if len(text) <= limit else f"{text[:limit]}..."


def _split_url(url, what):
    """urlsplit(url), by the one rule for every URL that may hold a user name and password
    (AMQP, HTTP, the databases): a ValueError naming `what`, and never showing the URL,
    when urllib cannot read it, or when an @ comes after the host (two in the host part,
    or one in the path, query or fragment). Such an @ may end an unencoded / ? # or @ in the
    password, whose rest would be read as a host, a port or a path: sent there, and shown
    (http://user:123/pw@host/ is the host "user"). An @ that belongs in a path or query is
    written %40."""
    from urllib.parse import urlsplit  # here, not at the top: slow to import

    if not isinstance(url, str):
        raise ValueError(f"{what} must be a URL, got {type(url).__name__}")
    try:
        parts = urlsplit(url)
    except ValueError:  # its message quotes the user name, password and host
        parts = None
    if parts is None:  # raised here, not in the except: no __context__ to quote them either
        raise ValueError(f"{what} is not a valid URL (not shown: it may hold a password); "
                         "percent-encode the user name and password, and write an IPv6 "
                         "address in brackets")
    if parts.netloc.count("@") > 1 or "@" in parts.path + parts.query + parts.fragment:
        raise ValueError(f"{what} has an @ after the host: percent-encode '/', '?', '#' and "
                         "'@' in the user name and password (%2F, %3F, %23, %40), and an '@' "
                         "in the path or query (%40)")
    return parts


def _time_left(deadline, clock=time.monotonic, at_least=0.0, expired=None):
    """Seconds from now (clock()) until `deadline`, at least `at_least`: 0 for a wait, a
    little more for a socket's timeout (where 0 would mean "do not block"). With `expired`
    (a text), TimeoutError(expired) once the deadline has passed, instead."""
    left = deadline - clock()
    if expired is not None and left <= 0:
        raise TimeoutError(expired)
    return max(at_least, left)


class _handling_signals:
    """``with _handling_signals(handler):`` SIGTERM and SIGINT (Ctrl-C) call
    handler(signum, frame), and the handlers from before are back on the way out. Outside
    the main thread, where Python allows no signal handler, it changes nothing."""

    def __init__(self, handler, names=("SIGTERM", "SIGINT")):
        self.handler, self.names, self._previous = handler, names, []

    def __enter__(self):
        import signal  # here, not at the top: only the command line's loops need it

        if threading.current_thread() is threading.main_thread():
            for name in self.names:
                number = getattr(signal, name)
                self._previous.append((number, signal.signal(number, self.handler)))
        return self

    def __exit__(self, *exc_info):
        import signal  # here, not at the top: only the command line's loops need it

        while self._previous:
            signal.signal(*self._previous.pop())


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
