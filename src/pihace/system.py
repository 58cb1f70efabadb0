"""system information: platform facts and resource figures, from psutil when it is installed, else
the standard library."""

from __future__ import annotations

import os
import sys
import threading


try:
    import psutil
except ImportError:  # psutil is optional: the standard library covers Linux
    psutil = None


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

    def __getstate__(self):  # copy.deepcopy, pickle (a HealthCheck holding it): not the lock
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

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
        except Exception:  # whatever psutil raises (psutil.Error, NotImplementedError...)
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
        except Exception:  # whatever psutil raises: the figure is null, the report goes on
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
        except Exception:  # whatever psutil raises: the figure is null, the report goes on
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
            "memory_available": _in_units(memory_available, 1024 ** 2, "MB"),
            "disk_usage": None if disk_percent is None else f"{disk_percent}%",
            "disk_available": _in_units(disk_free, 1024 ** 3, "GB"),
            "os": uname[0] or None,
            "os_version": uname[3] or None,
            "python_version": "%d.%d" % sys.version_info[:2],
        }


def _in_units(count, unit, name):
    """A count of bytes as pihace 1.0.0 showed it ("512.0 MB"); None when it is None or not a
    number (a test's double of psutil may give anything)."""
    try:
        return None if count is None else f"{round(count / unit, 2)} {name}"
    except Exception:
        return None


_system_info = SystemInfo()


def get_system_info():
    """This machine's system figures (pihace 1.0.0's ``pihace.system_info``)."""
    return _system_info.read()
