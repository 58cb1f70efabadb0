"""Private MariaDB and InfluxDB 1.x servers for pihace's tests (issue 15).

Test-only helper (standard library only), like rabbitnode.py: each server runs
from Debian's package as the current user, on free ports of 127.0.0.1, with
its data in a temporary folder that close() removes. The MySQL client used to
set MariaDB up and to check what pihace reports is MariaDB's own
``mariadb`` command over the server's Unix socket::

    with MariaDB() as db:
        db.sql("CREATE USER ...")        # as root, through the Unix socket
        print(db.port)

    with InfluxDB() as influx:
        print(influx.url)                # http://127.0.0.1:PORT
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

from rabbitnode import free_port

MARIADBD = "/usr/sbin/mariadbd"
INSTALL_DB = "/usr/bin/mariadb-install-db"
MARIADB_CLIENT = "/usr/bin/mariadb"
INFLUXD = "/usr/bin/influxd"

_live: set = set()


class ServerError(RuntimeError):
    """A private server failed to start or to obey."""


def _tail(path, size=4000):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return f"({path}: not found)"


class _Server:
    """A process in its own session and folder; close() stops it and removes the folder."""

    binary = ""
    package = ""

    def __init__(self, prefix):
        if not os.access(self.binary, os.X_OK):
            raise FileNotFoundError(f"{self.binary} not found: install Debian's {self.package} "
                                    "package (bash .ci/setup as root)")
        self.dir = tempfile.mkdtemp(prefix=prefix)
        self.log = os.path.join(self.dir, "server.log")
        self.port = free_port()
        self._proc = None
        _live.add(self)

    def _spawn(self, argv, deadline, ready):
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(argv, cwd=self.dir, stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        while not ready():
            if self._proc.poll() is not None:
                raise ServerError(f"{argv[0]} exited with status {self._proc.returncode}\n"
                                  + _tail(self.log))
            if time.monotonic() > deadline:
                self.close()
                raise ServerError(f"{argv[0]} did not become ready in time\n" + _tail(self.log))
            time.sleep(0.05)

    def _port_open(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Stop the server (SIGTERM, then SIGKILL after 20 s) and remove its folder."""
        if self._proc is not None and self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGTERM)
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        _live.discard(self)
        shutil.rmtree(self.dir, ignore_errors=True)


class MariaDB(_Server):
    """A private mariadbd: root logs in without a password over the Unix socket only."""

    binary = MARIADBD
    package = "mariadb-server"

    def __init__(self, timeout=60):
        super().__init__("pihace-mariadb-")
        deadline = time.monotonic() + timeout
        data = os.path.join(self.dir, "data")
        self.socket = os.path.join(self.dir, "mysqld.sock")
        # --user=root: run as the current user (root in CI), which mariadbd refuses otherwise
        install = subprocess.run(
            [INSTALL_DB, "--no-defaults", f"--datadir={data}", "--user=root",
             "--auth-root-authentication-method=socket", "--skip-test-db"],
            capture_output=True, text=True, timeout=timeout)
        if install.returncode != 0:
            raise ServerError("mariadb-install-db failed\n" + install.stdout + install.stderr)
        self._spawn([MARIADBD, "--no-defaults", f"--datadir={data}", "--user=root",
                     f"--port={self.port}", "--bind-address=127.0.0.1",
                     f"--socket={self.socket}", f"--pid-file={self.dir}/mysqld.pid",
                     f"--log-error={self.log}", "--skip-log-bin", "--innodb-buffer-pool-size=8M",
                     "--performance-schema=OFF", "--skip-name-resolve"],
                    deadline, self._port_open)

    def sql(self, statements, timeout=30):
        """Run SQL as root through the Unix socket with MariaDB's own client; its output."""
        result = subprocess.run([MARIADB_CLIENT, "--no-defaults", f"--socket={self.socket}",
                                 "-uroot", "--batch", "--skip-column-names", "-e", statements],
                                capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise ServerError(f"mariadb -e {statements!r} failed: {result.stderr.strip()}")
        return result.stdout


class InfluxDB(_Server):
    """A private influxd 1.x with HTTP on a free port and no reporting."""

    binary = INFLUXD
    package = "influxdb"

    def __init__(self, timeout=60):
        super().__init__("pihace-influxdb-")
        deadline = time.monotonic() + timeout
        self.bind_port = free_port()
        config = os.path.join(self.dir, "influxdb.conf")
        with open(config, "w") as f:
            f.write(f"""reporting-disabled = true
bind-address = "127.0.0.1:{self.bind_port}"
[meta]
  dir = "{self.dir}/meta"
[data]
  dir = "{self.dir}/data"
  wal-dir = "{self.dir}/wal"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:{self.port}"
  log-enabled = false
[monitor]
  store-enabled = false
""")
        self.url = f"http://127.0.0.1:{self.port}"
        self._spawn([INFLUXD, "-config", config], deadline, self._pings)

    def _pings(self):
        try:
            with urllib.request.urlopen(self.url + "/ping", timeout=0.5) as response:
                return response.status == 204
        except OSError:
            return False


@atexit.register
def _close_all():
    for server in list(_live):
        server.close()
