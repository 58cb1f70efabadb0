"""Proof (issue 15): pihace 1.0.0's own test and examples run unchanged on pihace.py.

Each runs in a fresh interpreter started with ``-S`` (no site-packages: nothing but the
standard library, so no pika, psutil, requests or database driver), next to a lone copy of
pihace.py. Their text is pihace 1.0.0's (tests/test_basic.py, examples/basic/basic.py,
examples/pusher/messaging/pusher.py), changed only where a host name or port is written.
The servers are the suite's own: RabbitMQ, MariaDB and InfluxDB 1.6 started privately, a
local HTTPS server standing for https://example.com (its host and port changed to localhost's,
with a trustme certificate that SSL_CERT_FILE makes trusted), and a scripted MongoDB (which
Debian does not package) that answers hello and ping with the wire protocol's bytes.
"""

import http.server
import json
import os
import shutil
import ssl
import struct
import subprocess
import sys
import threading
import time

import pytest

from faultproxy import Listener

HERE = os.path.dirname(os.path.abspath(__file__))

TEST_BASIC = '''\
import unittest
from pihace.healthcheck import HealthCheck

class TestHealthCheck(unittest.TestCase):

    def test_mock_success(self):
        def mock_success():
            return True

        hc = HealthCheck()
        hc.register("MockSuccess", mock_success)
        result = hc.check()

        self.assertEqual(result["status"], "Available")
        self.assertEqual(result["rate"], "1/1")
        self.assertNotIn("MockSuccess", result["failure"])

    def test_mock_fail(self):
        def mock_fail():
            return (False, "mocked error")

        hc = HealthCheck()
        hc.register("MockFail", mock_fail)
        result = hc.check()

        self.assertEqual(result["status"], "Unavailable")
        self.assertEqual(result["rate"], "0/1")
        self.assertIn("MockFail", result["failure"])
        self.assertEqual(result["failure"]["MockFail"], "mocked error")

if __name__ == "__main__":
    unittest.main()
'''

BASIC = '''\
from pihace.healthcheck import HealthCheck
from pihace.plugins.mysql import MySQL
from pihace.plugins.mongodb import MongoDB
from pihace.plugins.influxdb import InfluxDB
from pihace.plugins.http import HTTP

if __name__ == "__main__":
    hc = HealthCheck(with_system=True, name="example-api", version="v0.1.0")

    hc.register("MySQL A", MySQL(dsn="mysql://root:root@localhost:3306/testdb"), timeout=5, retries=2)
    hc.register("MongoDB B", MongoDB(dsn="mongodb://localhost:27017"))
    hc.register("InfluxDB C", InfluxDB(url="http://localhost:8086", token="admintoken", org="myorg"))
    hc.register("HTTP D", HTTP(url="https://example.com"))

    print(hc.check(output="str"))
    print(hc.check(output="json", pretty=True))
    print(hc.check())
'''

PUSHER = '''\
from pihace.healthcheck import HealthCheck
from pihace.pusher.messaging import AMQPPusher

hc = HealthCheck(with_system=True, name="MyApp", version="1.0.0")
hc.register("example", lambda: True)

publisher = AMQPPusher(amqp_url="amqp://guest:guest@localhost:5672/", healthcheck=hc)
publisher.push()

publisher.push_forever_in_loop(interval=5)
'''


@pytest.fixture
def only_the_file(tmp_path):
    """A folder with a copy of pihace.py; run(name, text, **env) runs text saved as `name`
    there with ``python -S`` (the standard library only) and returns the Popen."""
    shutil.copy(os.path.join(HERE, "pihace.py"), tmp_path)
    processes = []

    def run(name, text, *args, env=None):
        (tmp_path / name).write_text(text)
        environment = dict(os.environ, PYTHONPATH=str(tmp_path), **(env or {}))
        process = subprocess.Popen([sys.executable, "-S", *args, name], cwd=tmp_path,
                                   env=environment, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        processes.append(process)
        return process

    yield run
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.communicate()


def test_nothing_but_the_standard_library_is_there(only_the_file):
    process = only_the_file("probe.py", "import importlib.util as u\n"
                            "print([m for m in ('pika', 'psutil', 'requests', 'yaml', 'pymongo') "
                            "if u.find_spec(m)])\n")
    out, err = process.communicate(timeout=30)
    assert (process.returncode, out) == (0, "[]\n"), err


def test_pihace_1_0_0_tests_test_basic(only_the_file):
    """As under pihace 1.0.0 itself: test_mock_fail passes, and test_mock_success fails the
    same way there and here (assertNotIn(..., None): 1.0.0's "failure" is None when all
    passed, and so is pihace.py's)."""
    process = only_the_file("test_basic.py", TEST_BASIC, "-m", "unittest", "-v")
    out, err = process.communicate(timeout=60)
    assert "test_mock_fail (test_basic.TestHealthCheck" in err and "... ok" in err
    assert "test_mock_success (test_basic.TestHealthCheck" in err
    assert "TypeError: argument of type 'NoneType' is not iterable" in err
    assert err.rstrip().endswith("FAILED (errors=1)"), err


MONGO_OK = bytes.fromhex(  # {isWritablePrimary: true, maxWireVersion: 21, ok: 1.0}, in BSON
    "39000000" "08" "69735772697461626c655072696d61727900" "01"
    "10" "6d61785769726556657273696f6e00" "15000000" "01" "6f6b00" "000000000000f03f" "00")


class ScriptedMongo(Listener):
    """A stand-in for mongod on loopback: each OP_MSG is answered with MONGO_OK."""

    def __init__(self):
        self.commands = 0
        super().__init__(self._answer)

    def _answer(self, connection):
        connection.settimeout(10)
        data = b""
        while True:
            chunk = connection.recv(65536)
            if not chunk:
                return
            data += chunk
            while len(data) >= 16 and len(data) >= int.from_bytes(data[:4], "little"):
                length, request_id = struct.unpack_from("<ii", data)
                data = data[length:]
                self.commands += 1
                body = b"\0\0\0\0\x00" + MONGO_OK
                connection.sendall(struct.pack("<iiii", 16 + len(body), 1000 + request_id,
                                               request_id, 2013) + body)


@pytest.fixture
def example_com(tmp_path):
    """https://localhost:PORT with a certificate of a CA that SSL_CERT_FILE makes trusted."""
    import trustme  # a test requirement: .ci/setup installs it
    authority = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield server.server_address[1], str(ca_file)
    server.shutdown()
    server.server_close()


def test_pihace_1_0_0_examples_basic(only_the_file, mariadb, influxdb, example_com):
    mongo = ScriptedMongo()
    https_port, ca_file = example_com
    connections = int(mariadb.sql("SHOW GLOBAL STATUS LIKE 'Connections'").split()[1])
    try:
        text = (BASIC.replace("localhost:3306", f"localhost:{mariadb.port}")
                .replace("localhost:27017", f"localhost:{mongo.port}")
                .replace("localhost:8086", f"localhost:{influxdb.port}")
                .replace("https://example.com", f"https://localhost:{https_port}"))
        process = only_the_file("basic.py", text, env={"SSL_CERT_FILE": ca_file})
        out, err = process.communicate(timeout=90)
    finally:
        mongo.close()
    assert process.returncode == 0, err
    lines = out.splitlines()
    assert lines[0] == "Status: Available (4/4 healthy)", out
    assert "Component: example-api v0.1.0" in lines
    as_json = json.loads(out[out.index("\n{") + 1:out.index("\n}\n") + 2])
    assert as_json["status"] == "Available" and as_json["failure"] is None
    assert as_json["system"]["python_version"] == "%d.%d" % sys.version_info[:2]
    assert lines[-1].startswith("{'status': 'Available'")
    # each of the three checks logged in to MariaDB and asked the scripted MongoDB twice
    assert int(mariadb.sql("SHOW GLOBAL STATUS LIKE 'Connections'").split()[1]) >= connections + 3
    assert mongo.commands == 6


def test_pihace_1_0_0_examples_pusher_messaging(only_the_file, rabbit, pika_channel,
                                               get_message):
    if not rabbit.url.startswith("amqp://guest:guest@127.0.0.1:"):
        pytest.skip("the example logs in as guest on localhost: needs the suite's own broker")
    port = rabbit.url.rsplit(":", 1)[1].strip("/")
    pika_channel.queue_delete("pihace.healthcheck")
    pika_channel.queue_declare("pihace.healthcheck", durable=True)  # to read it at once
    process = only_the_file("pusher.py", PUSHER.replace("localhost:5672", f"localhost:{port}"))
    first = get_message("pihace.healthcheck", timeout=30)  # push()
    second = get_message("pihace.healthcheck", timeout=30)  # the loop's first round
    process.kill()
    for method, properties, body in (first, second):
        report = json.loads(body)
        assert report["status"] == "Available" and report["rate"] == "1/1"
        assert report["component"] == {"name": "MyApp", "version": "1.0.0"}
        assert report["system"]["os"]
        assert properties.delivery_mode == 2
    pika_channel.queue_delete("pihace.healthcheck")
