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
        process = only_the_file("basic.py", text, env={  # the bundles would come first
            "SSL_CERT_FILE": ca_file, "REQUESTS_CA_BUNDLE": "", "CURL_CA_BUNDLE": ""})
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


# ---------------------------------------------------------------------------
# issue 28: what else a user migrating from pihace 1.0.0 runs, unchanged
# ---------------------------------------------------------------------------

def finished(process, timeout=60):
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err
    return out


def test_pika_url_query_keys_are_accepted(only_the_file, rabbit, pika_channel):
    queue = "pihace.query-keys"
    pika_channel.queue_delete(queue)
    text = f'''\
from pihace.healthcheck import HealthCheck
from pihace.pusher.messaging import AMQPPusher

hc = HealthCheck()
hc.register("example", lambda: True)
url = ("{rabbit.url.rstrip('/')}/?connection_attempts=3&retry_delay=1&socket_timeout=5"
       "&blocked_connection_timeout=300&stack_timeout=15&locale=en_US&heartbeat=30"
       "&channel_max=64&frame_max=131072&tcp_options=%7B%7D")
publisher = AMQPPusher(amqp_url=url, healthcheck=hc, queue_name="{queue}")
print(publisher.push())
'''
    assert finished(only_the_file("keys.py", text)) == "True\n"
    assert pika_channel.queue_declare(queue, passive=True).method.message_count == 1
    pika_channel.queue_delete(queue)


def test_publisher_connection_and_channel_as_pika_s(only_the_file, rabbit, pika_channel,
                                                   get_message):
    queue, other = "pihace.adapters", "pihace.adapters-other"
    for name in (queue, other):
        pika_channel.queue_delete(name)
    text = f'''\
from pihace.healthcheck import HealthCheck
from pihace.pusher.messaging import AMQPPusher

hc = HealthCheck()
hc.register("example", lambda: True)
publisher = AMQPPusher(amqp_url="{rabbit.url}", healthcheck=hc, queue_name="{queue}")
publisher.push()
publisher.push()
publisher.connection.process_data_events(0)
publisher.connection.sleep(0.1)
print(publisher.connection.is_open, publisher.channel.is_open)
print(publisher.channel.queue_purge("{queue}").method.message_count)
declared = publisher.channel.queue_declare(queue="{other}", durable=True)
print(declared.method.queue, declared.method.message_count)
publisher.channel.basic_publish(exchange="", routing_key="{other}", body="hello")
publisher.channel.basic_publish(exchange="", routing_key="{other}", body=b"again")
print(publisher.push())
publisher.connection.close()
print(publisher.connection.is_open)
'''
    out = finished(only_the_file("adapters.py", text))
    assert out.splitlines() == ["True True", "2", f"{other} 0", "True", "False"], out
    assert get_message(other)[2] == b"hello" and get_message(other)[2] == b"again"
    assert json.loads(get_message(queue)[2])["status"] == "Available"  # the last push only
    assert pika_channel.queue_declare(queue, passive=True).method.message_count == 0
    for name in (queue, other):
        pika_channel.queue_delete(name)


def test_subclass_overrides_are_called(only_the_file):
    text = '''\
import asyncio
from pihace.healthcheck import HealthCheck

class Counted(HealthCheck):
    calls = []

    async def run_checker_with_retries(self, name, checker, retries, timeout):
        self.calls.append(name)
        if name == "forced":
            return (False, "overridden")
        return await super().run_checker_with_retries(name, checker, retries, timeout)

class Tagged(HealthCheck):
    async def _check_async(self, output="dict", pretty=True):
        result = await super()._check_async(output, pretty)
        result["tag"] = "mine"
        return result

hc = Counted()
hc.register("ok", lambda: True)
hc.register("forced", lambda: True)
report = hc.check()
print(sorted(hc.calls), report["status"], report["failure"])

async def inside_a_loop():
    return hc.check()["rate"], (await hc._check_async())["rate"]

print(asyncio.run(inside_a_loop()))
tagged = Tagged()
tagged.register("ok", lambda: True)
print(tagged.check()["tag"])
'''
    out = finished(only_the_file("overrides.py", text)).splitlines()
    assert out == ["['forced', 'ok'] Partially Available {'forced': 'overridden'}",
                   "('1/2', '1/2')", "mine"], out


def test_checkers_entries_are_dicts_and_a_healthcheck_copies_and_pickles(only_the_file):
    text = '''\
import copy
import pickle
from pihace.healthcheck import HealthCheck

def ok():
    return True

hc = HealthCheck(with_system=True, name="app", version="1")
hc.register("ok", ok, timeout=3, retries=1)
hc.check()
entry = hc.checkers["ok"]
print(isinstance(entry, dict), entry.copy() == {"checker": ok, "timeout": 3, "retries": 1})
entry["owner"] = "team-a"
print(entry["owner"], sorted(entry))
clone = copy.deepcopy(hc)
clone.checkers["ok"]["timeout"] = 9
print(hc.checkers["ok"]["timeout"], clone.check()["status"])
print(copy.deepcopy(hc.checkers)["ok"]["owner"])
again = pickle.loads(pickle.dumps(hc))
print(again.check()["rate"], again.checkers["ok"]["owner"], again.component_name)
hc.checkers["copied"] = entry.copy()
print(hc.check()["rate"])
'''
    out = finished(only_the_file("entries.py", text)).splitlines()
    assert out == ["True True", "team-a ['checker', 'owner', 'retries', 'timeout']",
                   "3 Available", "team-a", "1/1 team-a app", "2/2"], out


def test_pihace_1_0_0_patch_targets_resolve(only_the_file):
    text = '''\
from datetime import datetime
from unittest import mock
import pihace.healthcheck
import pihace.plugins.http, pihace.plugins.mysql, pihace.plugins.mongodb
import pihace.plugins.influxdb, pihace.plugins.elasticsearch, pihace.storage.mongodb
import pihace.pusher.messaging, pihace.utils, pihace.system_info
from pihace.healthcheck import HealthCheck

for target in ("pihace.pusher.messaging.pika", "pihace.plugins.http.requests.get",
               "pihace.plugins.mysql.mysql.connector.connect",
               "pihace.plugins.mongodb.MongoClient", "pihace.plugins.influxdb.InfluxDBClient",
               "pihace.plugins.elasticsearch.Elasticsearch",
               "pihace.storage.mongodb.MongoClient"):
    with mock.patch(target) as patched:
        print(target, type(patched).__name__)

with mock.patch("pihace.utils.datetime") as mock_dt:
    mock_dt.utcnow.return_value = datetime(2024, 1, 2, 3, 4, 5)
    print(HealthCheck().check()["timestamp"])

with mock.patch("pihace.system_info.psutil") as fake:
    fake.virtual_memory.return_value.percent = 42.0
    fake.virtual_memory.return_value.available = 512 * 1024 ** 2
    fake.virtual_memory.side_effect = None
    system = HealthCheck(with_system=True).check()["system"]
    print(system["memory_usage"], system["memory_available"])
'''
    out = finished(only_the_file("patches.py", text)).splitlines()
    assert [line.split()[1] for line in out[:7]] == ["MagicMock"] * 7, out
    assert out[7:] == ["2024-01-02T03:04:05Z", "42.0% 512.0 MB"], out


@pytest.fixture
def tls_databases(tmp_path):
    """https://localhost:PORT answering as InfluxDB (/health: pass) and
    Elasticsearch (/_cluster/health: green) do, with a certificate of a private CA (its file returned)."""
    import trustme  # a test requirement
    authority = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(context)
    ca_file = tmp_path / "private-ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = {"/_cluster/health": b'{"status":"green"}',
                    "/health": b'{"status":"pass"}'}.get(self.path.partition("?")[0], b"")
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield server.server_address[1], str(ca_file)
    server.shutdown()
    server.server_close()


def test_a_private_ca_named_in_requests_ca_bundle_is_trusted(only_the_file, tls_databases):
    https_port, ca_file = tls_databases
    text = f'''\
from pihace.healthcheck import HealthCheck
from pihace.plugins.http import HTTP
from pihace.plugins.influxdb import InfluxDB
from pihace.plugins.elasticsearch import ElasticSearch

hc = HealthCheck()
hc.register("http", HTTP(url="https://localhost:{https_port}/"))
hc.register("influx", InfluxDB(url="https://localhost:{https_port}"))
hc.register("elastic", ElasticSearch(es_url="https://localhost:{https_port}"))
print(hc.check()["failure"])
'''
    for variable in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):  # as requests: the first set
        bundles = {"REQUESTS_CA_BUNDLE": "", "CURL_CA_BUNDLE": "", variable: ca_file}
        out = finished(only_the_file("bundle.py", text, env=bundles))
        assert out == "None\n", (variable, out)
    out = finished(only_the_file("bundle.py", text, env={"REQUESTS_CA_BUNDLE": "",
                                                          "CURL_CA_BUNDLE": ""}))
    assert out.count("CERTIFICATE_VERIFY_FAILED") == 3, out


def test_the_timestamp_under_freezegun_is_pihace_1_0_0_s(tmp_path):
    pytest.importorskip("freezegun")  # a test requirement
    shutil.copy(os.path.join(HERE, "pihace.py"), tmp_path)
    code = '''\
import freezegun
from pihace.healthcheck import HealthCheck
with freezegun.freeze_time("2024-01-02 03:04:05"):
    print(HealthCheck().check()["timestamp"])
with freezegun.freeze_time("2024-01-02 03:04:05.25"):
    print(HealthCheck().check()["timestamp"])
'''
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    assert result.stdout.splitlines() == ["2024-01-02T03:04:05Z",
                                          "2024-01-02T03:04:05.250000Z"], result.stderr


@pytest.mark.parametrize("error", ["RuntimeError('no /proc here')",
                                   "NotImplementedError('not on this OS')",
                                   "psutil.Error('gone')", "PermissionError(1, 'denied')"])
def test_any_psutil_error_is_a_null_figure(only_the_file, error):
    text = f'''\
import sys, types
psutil = types.ModuleType("psutil")
psutil.Error = type("Error", (Exception,), {{}})

def broken(*args, **kwargs):
    raise {error}

psutil.cpu_times = psutil.virtual_memory = psutil.disk_usage = psutil.cpu_percent = broken
sys.modules["psutil"] = psutil
from pihace.healthcheck import HealthCheck
from pihace.pusher.messaging import AMQPPusher

hc = HealthCheck(with_system=True)
hc.register("ok", lambda: True)
report = hc.check()
print(report["status"], [key for key, value in report["system"].items() if value is None])
print(AMQPPusher(hc, "amqp://127.0.0.1:1/", timeout=0.5).push()[0])
'''
    out = finished(only_the_file("broken_psutil.py", text)).splitlines()
    assert out == ["Available ['cpu_usage', 'memory_usage', 'memory_available', 'disk_usage', "
                   "'disk_available']", "False"], out


def test_a_late_answer_is_a_timeout_whatever_the_retries(only_the_file):
    text = '''\
import time
from pihace.healthcheck import HealthCheck

def slow():
    time.sleep(0.8)  # simulated work: slower than its timeout
    return True

hc = HealthCheck()
hc.register("slow", slow, timeout=0.3, retries=2)
started = time.monotonic()
report = hc.check()
print(report["status"], report["failure"]["slow"].split(" (")[0], time.monotonic() - started < 1.5)
'''
    out = finished(only_the_file("late.py", text))
    assert out == "Unavailable timed out after 0.3s True\n", out
