"""state files: what the watcher remembers across restarts, written atomically (a temporary
file, fsync, rename, the folder fsynced; mode 0600) and read back with every problem named."""

from __future__ import annotations

import os
import stat
import time

from .header import log
from .helpers import _printable, describe_error

_STATE_LIMIT = 1 << 30  # bytes: a state file larger than this is not read


def write_atomically(path, data, mode=0o600):
    """`data` (bytes, or an iterable of bytes written as they come) at `path`, all or nothing: a reader (or a crash) sees the old file or
    the new one, never a part (a temporary file in the same folder, fsync, rename, and the
    folder fsynced). Created with `mode`; a symbolic link at the temporary name is never
    followed."""
    folder = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        os.unlink(temporary)  # one a crash of this pid left
    except FileNotFoundError:
        pass
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    descriptor = os.open(temporary, flags, mode)
    try:
        os.fchmod(descriptor, mode)  # whatever the umask
        with os.fdopen(descriptor, "wb") as file:
            for part in (data,) if isinstance(data, bytes) else data:
                file.write(part)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    if hasattr(os, "O_DIRECTORY"):  # the rename itself, durable
        folder_descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder_descriptor)
        finally:
            os.close(folder_descriptor)


def read_state(path, kind, version, listed=None):
    """The JSON document at `path` whose `kind` key holds its format number, or None when
    there is none, or it could not be read as one (it is then set aside as
    PATH.unreadable-TIME and the reason logged: a fresh start, nothing lost). ValueError,
    which says why, when the file must not be used: another user's, writable by others, a
    symbolic link, or a format newer than `version`.

    When its first line ends with the list `listed` (`"devices":[`) and that list has an
    item per line, the document's `listed` is an iterator over them, read and parsed one at
    a time (None for an item that is not JSON): 100,000 devices are never parsed at once."""
    import json  # here, not at the top: slow to import (see the imports)

    shown = _printable(path)
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(status.st_mode):
        raise ValueError(f"the state file {shown} is a symbolic link: not followed (name the "
                         "file itself)")
    if not stat.S_ISREG(status.st_mode):
        raise ValueError(f"the state file {shown} is not a regular file")
    if hasattr(os, "geteuid") and status.st_uid != os.geteuid():
        raise ValueError(f"the state file {shown} belongs to another user (uid "
                         f"{status.st_uid}): use a file of this user's (uid {os.geteuid()})")
    if status.st_mode & 0o022:
        raise ValueError(f"the state file {shown} may be written by its group or others (mode "
                         f"{stat.S_IMODE(status.st_mode):04o}): make it 0600")
    file = None
    try:
        if status.st_size > _STATE_LIMIT:
            raise ValueError(f"larger than {_STATE_LIMIT} bytes")
        file = open(path, "rb")
        head = file.readline(_STATE_LIMIT)
        by_line = listed is not None and head.endswith(b',"%s":[\n' % listed.encode())
        document = json.loads(head[:-1] + b"]}" if by_line else head + file.read(_STATE_LIMIT))
        if type(document) is not dict or type(document.get(kind)) is not int:
            raise ValueError(f"not a state file (no {kind!r} format number)")
    except (OSError, ValueError, RecursionError) as exc:
        if file is not None:
            file.close()
        _set_aside(path, describe_error(exc))
        return None
    if document[kind] > version:
        file.close()
        raise ValueError(f"the state file {shown} was written by a newer pihace (format "
                         f"{document[kind]}; this one reads format {version}): run that one, "
                         "or move the file away to start afresh")
    if by_line:
        document[listed] = _items_by_line(file)
    else:
        file.close()
    return document


def _items_by_line(file):
    """The items of a list written one per line, up to its "]}", parsed one at a time (None
    for one that is not JSON); the file closed at the end."""
    import json  # here, not at the top: slow to import (see the imports)

    with file:
        for line in file:
            line = line.rstrip(b",\r\n")
            if line == b"]}":
                return
            try:
                yield json.loads(line)
            except (ValueError, RecursionError):
                yield None


def _set_aside(path, why):
    aside = f"{path}.unreadable-{time.strftime('%Y%m%dT%H%M%S')}"
    try:
        os.replace(path, aside)
    except OSError as exc:
        raise ValueError(f"the state file {_printable(path)} cannot be read ({why}) nor set "
                         f"aside ({describe_error(exc)})") from None
    log.warning("the state file %s could not be read (%s): kept as %s; starting afresh",
                _printable(path), why, _printable(aside))
