"""Differential run (issue 15): the same scenarios under pihace 1.0.0 and under pihace.py.

pihace 1.0.0 runs as its users have it: ``pip install pihace==1.0.0`` with every dependency
it declares (pika, psutil, requests, mysql-connector-python, pymongo, influxdb-client,
elasticsearch, PyYAML, FastAPI...) in bench/.venv-pihace100-full, which this script makes on
first use. pihace.py runs from a snapshot of this tree with the system's python3. Each
scenario is a few lines of user code run in a fresh interpreter under each; what it prints
is compared, and every difference is listed at the end (the README's "What differs" table
gives the reason for each).

    python3 bench/compat_diff.py            # all scenarios (about a minute)
    python3 bench/compat_diff.py -k mysql   # those whose name holds "mysql"

The servers are private ones started here, as the tests do: RabbitMQ (rabbitnode.py),
MariaDB and InfluxDB 1.6 (dbservers.py), and a local HTTP server. When the venv cannot be
made (no network), the script says so and exits 0: it is never part of CI's required path.
"""

import argparse
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading

import common

VENV = os.path.join(common.BENCH, ".venv-pihace100-full")
VENV_PYTHON = os.path.join(VENV, "bin", "python")
PACKAGES = ["pihace==1.0.0", "uvicorn"]  # uvicorn: 1.0.0's providers import it, undeclared

PRELUDE = '''\
import asyncio, json, sys, time
def out(value):
    print("RESULT " + json.dumps(value, sort_keys=True, default=repr))
def stable(report):
    """A report without what changes from run to run (and without pihace.py's "checks")."""
    report = dict(report)
    for key in ("timestamp", "duration"):
        report[key] = type(report.get(key)).__name__
    if isinstance(report.get("system"), dict):
        report["system"] = sorted(report["system"])
    report.pop("checks", None)
    return report
def run(checker, **options):
    from pihace.healthcheck import HealthCheck
    hc = HealthCheck()
    hc.register("c", checker, **options)
    return stable(hc.check())
'''

SCENARIOS = {
    # the report
    "no checkers": "from pihace.healthcheck import HealthCheck\nout(stable(HealthCheck().check()))",
    "report keys": "from pihace.healthcheck import HealthCheck\nout(sorted(HealthCheck().check()))",
    "passing checker": "out(run(lambda: True))",
    "(False, reason)": "out(run(lambda: (False, 'mocked error')))",
    "False": "out(run(lambda: False))",
    "(False, None)": "out(run(lambda: (False, None)))",
    "(True, detail)": "out(run(lambda: (True, 'fine')))",
    "returns None": "out(run(lambda: None))",
    "returns a string": "out(run(lambda: 'ok'))",
    "raises ValueError": "def boom():\n    raise ValueError('boom')\nout(run(boom))",
    "async passing": "async def ok():\n    return True\nout(run(ok))",
    "async (False, reason)": "async def no():\n    return False, 'async no'\nout(run(no))",
    "async raises": "async def boom():\n    raise RuntimeError('async boom')\nout(run(boom))",
    "sync timeout": "out(run(lambda: time.sleep(0.5) or True, timeout=0.1, retries=1))",
    "async timeout": ("async def slow():\n    await asyncio.sleep(0.5)\n    return True\n"
                      "out(run(slow, timeout=0.1, retries=1))"),
    "retries=0": "out(run(lambda: True, retries=0))",
    "an exception then a pass, retries=2": (
        "calls = []\ndef flaky():\n    calls.append(1)\n    if len(calls) == 1:\n"
        "        raise OSError('first')\n    return True\nout([run(flaky, retries=2), len(calls)])"),
    "False then a pass, retries=2": (
        "calls = []\ndef flaky():\n    calls.append(1)\n    return len(calls) > 1\n"
        "out([run(flaky, retries=2), len(calls)])"),
    "partially available": (
        "from pihace.healthcheck import HealthCheck\nhc = HealthCheck()\n"
        "hc.register('a', lambda: True)\nhc.register('b', lambda: (False, 'down'))\n"
        "out(stable(hc.check()))"),
    "component, name and version": (
        "from pihace.healthcheck import HealthCheck\n"
        "out(HealthCheck(name='api', version='1.2').check()['component'])"),
    "component, name only": (
        "from pihace.healthcheck import HealthCheck\n"
        "out(HealthCheck(name='api').check()['component'])"),
    "with_system keys": (
        "from pihace.healthcheck import HealthCheck\n"
        "out(sorted(HealthCheck(with_system=True).check()['system']))"),
    "output json, pretty": (
        "from pihace.healthcheck import HealthCheck\nhc = HealthCheck(name='a', version='1')\n"
        "text = hc.check(output='json')\nout([text.startswith('{\\n    '), "
        "stable(json.loads(text))])"),
    "output json, not pretty": (
        "from pihace.healthcheck import HealthCheck\n"
        "out('\\n' in HealthCheck().check(output='json', pretty=False))"),
    "output str": (
        "from pihace.healthcheck import HealthCheck\nhc = HealthCheck(name='a', version='1')\n"
        "hc.register('db', lambda: (False, 'down'))\n"
        "out([line for line in hc.check(output='str').splitlines() if 'Timestamp' not in line])"),
    "output str with_system": (
        "from pihace.healthcheck import HealthCheck\n"
        "text = HealthCheck(with_system=True).check(output='str')\n"
        "out([line.split(' ')[0] for line in text.splitlines()])"),
    "output None": "from pihace.healthcheck import HealthCheck\nout(type(HealthCheck().check(output=None)).__name__)",
    "output 'JSON'": "from pihace.healthcheck import HealthCheck\nout(type(HealthCheck().check(output='JSON')).__name__)",
    "output 'yaml'": (
        "from pihace.healthcheck import HealthCheck\ntry:\n"
        "    out(type(HealthCheck().check(output='yaml')).__name__)\n"
        "except Exception as exc:\n    out(type(exc).__name__)"),
    "register a non-callable": (
        "from pihace.healthcheck import HealthCheck\ntry:\n    HealthCheck().register('x', 5)\n"
        "except Exception as exc:\n    out([type(exc).__name__, str(exc)])"),
    "timeout=None": "out(run(lambda: True, timeout=None))",
    "hc.checkers[name]": (
        "from pihace.healthcheck import HealthCheck\nhc = HealthCheck()\nf = lambda: True\n"
        "hc.register('x', f, timeout=3, retries=1)\nentry = hc.checkers['x']\n"
        "out([entry['checker'] is f, entry['timeout'], entry['retries'], sorted(entry)])"),
    "check() inside a running loop": (
        "from pihace.healthcheck import HealthCheck\nasync def main():\n    try:\n"
        "        return stable(HealthCheck().check())\n    except Exception as exc:\n"
        "        return type(exc).__name__\nout(asyncio.run(main()))"),
    "await hc._check_async()": (
        "from pihace.healthcheck import HealthCheck\nhc = HealthCheck()\n"
        "hc.register('a', lambda: True)\nout(stable(asyncio.run(hc._check_async())))"),
    "an async checker on the caller's loop": (
        "from pihace.healthcheck import HealthCheck\nasync def main():\n"
        "    loop = asyncio.get_running_loop()\n    async def same():\n"
        "        return asyncio.get_running_loop() is loop\n    hc = HealthCheck()\n"
        "    hc.register('same', same)\n    return stable(await hc._check_async())\n"
        "out(asyncio.run(main()))"),
    "a ContextVar in a sync checker": (
        "import contextvars\nvar = contextvars.ContextVar('v', default='unset')\nvar.set('set')\n"
        "seen = []\nout([run(lambda: seen.append(var.get()) or True), seen])"),
    "patch healthcheck.get_system_info": (
        "from unittest import mock\nfrom pihace.healthcheck import HealthCheck\n"
        "with mock.patch('pihace.healthcheck.get_system_info', return_value={'x': 1}):\n"
        "    out(HealthCheck(with_system=True).check()['system'])"),
    "patch system_info.psutil": (
        "from unittest import mock\nimport pihace.system_info\n"
        "with mock.patch('pihace.system_info.psutil') as fake:\n"
        "    fake.cpu_percent.return_value = 12.5\n"
        "    fake.virtual_memory.return_value.percent = 40.0\n"
        "    fake.virtual_memory.return_value.available = 512 * 1024 ** 2\n"
        "    fake.disk_usage.return_value.percent = 70.0\n"
        "    fake.disk_usage.return_value.free = 3 * 1024 ** 3\n"
        "    info = pihace.system_info.get_system_info()\n"
        "out({k: v for k, v in info.items() if k not in ('os', 'os_version', 'python_version')})"),
    "utils": (
        "from pihace.utils import calculate_status, format_rate, get_utc_timestamp\n"
        "out([calculate_status(0, 0), calculate_status(1, 2), calculate_status(0, 2), "
        "format_rate(1, 2), len(get_utc_timestamp()), get_utc_timestamp()[-1]])"),
    # AMQP
    "AMQPPusher push, read back": (
        "from pihace.healthcheck import HealthCheck\nfrom pihace.pusher.messaging import AMQPPusher\n"
        "import pika\nhc = HealthCheck(name='MyApp', version='1.0.0')\nhc.register('e', lambda: True)\n"
        "p = AMQPPusher(hc, '{amqp_url}', '{queue}')\nresult = p.push()\n"
        "c = pika.BlockingConnection(pika.URLParameters('{amqp_url}'))\nch = c.channel()\n"
        "m, props, body = ch.basic_get('{queue}', auto_ack=True)\nch.queue_delete('{queue}')\n"
        "out([result, stable(json.loads(body)), props.delivery_mode])"),
    "AMQPPusher attributes": (
        "from pihace.pusher.messaging import AMQPPusher\nfrom pihace.healthcheck import HealthCheck\n"
        "p = AMQPPusher(HealthCheck(), '{amqp_url}')\n"
        "out([p.amqp_url == '{amqp_url}', p.queue_name, 'guest:guest' in repr(p)])"),
    "AMQPPusher, broker down": (
        "from pihace.pusher.messaging import AMQPPusher\nfrom pihace.healthcheck import HealthCheck\n"
        "try:\n    p = AMQPPusher(HealthCheck(), 'amqp://guest:guest@127.0.0.1:{closed_port}/')\n"
        "    result = p.push()\n    out(['constructed', result[0], result[1].splitlines()[-1][:60]])\n"
        "except Exception as exc:\n    out(['raised', type(exc).__name__])"),
    "AMQPPusher, wrong password": (
        "from pihace.pusher.messaging import AMQPPusher\nfrom pihace.healthcheck import HealthCheck\n"
        "url = '{amqp_url}'.replace('guest:guest', 'guest:wrong')\ntry:\n"
        "    p = AMQPPusher(HealthCheck(), url)\n    result = p.push()\n"
        "    out(['constructed', result[0], 'wrong' in result[1]])\n"
        "except Exception as exc:\n    out(['raised', type(exc).__name__, 'wrong' in str(exc)])"),
    # plugins
    "HTTP 200": "from pihace.plugins.http import HTTP\nout(HTTP('{http_url}/ok')())",
    "HTTP 500": "from pihace.plugins.http import HTTP\nout(HTTP('{http_url}/fail')())",
    "HTTP refused": ("from pihace.plugins.http import HTTP\n"
                     "r = HTTP('http://127.0.0.1:{closed_port}/')()\nout([r[0], r[1][:50]])"),
    "MySQL": "from pihace.plugins.mysql import MySQL\nout(MySQL('mysql://root:root@127.0.0.1:{mysql_port}/testdb')())",
    "MySQL, wrong password": "from pihace.plugins.mysql import MySQL\nout(MySQL('mysql://root:nope@127.0.0.1:{mysql_port}/testdb')())",
    "MySQL, no such database": "from pihace.plugins.mysql import MySQL\nout(MySQL('mysql://root:root@127.0.0.1:{mysql_port}/nodb')())",
    "MySQL, refused": "from pihace.plugins.mysql import MySQL\nout(MySQL('mysql://root:root@127.0.0.1:{closed_port}/testdb')())",
    "MySQL, DSN without a port": (
        "from pihace.plugins.mysql import MySQL\ntry:\n    out(MySQL('mysql://root:root@127.0.0.1/testdb')())\n"
        "except Exception as exc:\n    out(['raised', type(exc).__name__])"),
    "InfluxDB 1.6": "from pihace.plugins.influxdb import InfluxDB\nout(InfluxDB('{influx_url}', token='admintoken', org='myorg')())",
    "InfluxDB, refused": "from pihace.plugins.influxdb import InfluxDB\nout(InfluxDB('http://127.0.0.1:{closed_port}')())",
    "MongoDB, refused": ("from pihace.plugins.mongodb import MongoDB\n"
                         "r = MongoDB('mongodb://127.0.0.1:{closed_port}')()\nout([r[0], r[1][:40]])"),
    "Elasticsearch, refused": ("from pihace.plugins.elasticsearch import ElasticSearch\n"
                               "r = ElasticSearch('http://127.0.0.1:{closed_port}')()\nout([r[0], r[1][:40]])"),
    "types": ("import typing\nfrom pihace.types import PluginType, PusherType\n"
              "out([typing.get_args(PluginType), typing.get_args(PusherType)])"),
    "loader, config without providers": (
        "from pihace.loader import load_healthcheck_from_yaml\nimport tempfile\n"
        "f = tempfile.NamedTemporaryFile('w', suffix='.yml', delete=False)\n"
        "f.write('instance:\\n  name: my_app\\nplugins:\\n  - name: Web check\\n    type: http\\n"
        "    config:\\n      url: {http_url}/ok\\n')\nf.close()\n"
        "r = load_healthcheck_from_yaml(f.name)\nhc = r['healthcheck']\n"
        "out([sorted(r), hc.component_name, hc.component_version, list(hc.checkers), "
        "stable(hc.check())])"),
}


def free_port():
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        return placeholder.getsockname()[1]


def ensure_venv():
    """bench/.venv-pihace100-full with pihace 1.0.0 and all it declares; False if impossible."""
    probe = [VENV_PYTHON, "-c", "import pihace.loader, pihace.providers.web"]
    if os.path.exists(VENV_PYTHON) and subprocess.run(probe, env=common.env_for(), cwd=common.BENCH,
                                                      capture_output=True).returncode == 0:
        return True
    print(f"setting up {VENV} (pip install {' '.join(PACKAGES)}) ...", file=sys.stderr)
    try:
        if not os.path.exists(VENV_PYTHON):
            subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        subprocess.run([VENV_PYTHON, "-m", "pip", "install", "--quiet", *PACKAGES], check=True,
                       timeout=900)
        return subprocess.run(probe, env=common.env_for(), cwd=common.BENCH).returncode == 0
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"cannot make {VENV}: {exc}", file=sys.stderr)
        return False


class Web(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response({"/ok": 200, "/fail": 500}.get(self.path, 404))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def run_scenario(python, env, code, cwd):
    try:
        result = subprocess.run([python, "-c", PRELUDE + code], env=env, capture_output=True,
                                text=True, timeout=60, cwd=cwd)
    except subprocess.TimeoutExpired:
        return "did not end within 60 s"
    for line in reversed(result.stdout.splitlines()):
        if line.startswith("RESULT "):
            return line[7:]
    lines = result.stderr.strip().splitlines()
    return "error: " + (lines[-1] if lines else f"exit code {result.returncode}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", default="", help="only scenarios whose name holds this")
    args = parser.parse_args()
    if not ensure_venv():
        print("compat_diff: pihace 1.0.0 cannot be installed here; nothing compared")
        return 0
    sys.path.insert(0, common.REPO)
    import dbservers

    scenarios = {name: code for name, code in SCENARIOS.items() if args.k.lower() in name.lower()}
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Web)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    snapshot = tempfile.mkdtemp(prefix="pihace-diff-")
    shutil.copy(os.path.join(common.REPO, "pihace.py"), snapshot)
    empty = os.path.join(snapshot, "cwd")  # where each scenario runs: no pihace.py there
    os.mkdir(empty)
    differences = []
    try:
        with common.broker(name="pihace-diff") as (amqp_url, _), dbservers.MariaDB() as mariadb, \
                dbservers.InfluxDB() as influx:
            mariadb.sql("CREATE DATABASE testdb; CREATE USER 'root'@'127.0.0.1' IDENTIFIED BY "
                        "'root'; GRANT ALL ON *.* TO 'root'@'127.0.0.1';")
            values = {"amqp_url": amqp_url, "mysql_port": mariadb.port, "influx_url": influx.url,
                      "http_url": f"http://127.0.0.1:{web.server_address[1]}",
                      "closed_port": free_port(), "queue": "pihace.diff"}
            peers = [("pihace 1.0.0", VENV_PYTHON, common.env_for()),
                     ("pihace.py", sys.executable, common.env_for(snapshot))]
            print(f"{'scenario':40}  {'same':4}  {'pihace 1.0.0':60}  pihace.py")
            for name, code in scenarios.items():
                code = code.replace("{", "{{").replace("}", "}}")
                for key in values:
                    code = code.replace("{{" + key + "}}", "{" + key + "}")
                code = code.format(**values)
                theirs, ours = (run_scenario(python, env, code, empty) for _, python, env in peers)
                same = theirs == ours
                if not same:
                    differences.append((name, theirs, ours))
                print(f"{name[:40]:40}  {'yes' if same else 'NO':4}  {theirs[:60]:60}  {ours[:60]}",
                      flush=True)
    finally:
        web.shutdown()
        shutil.rmtree(snapshot, ignore_errors=True)
    print(f"\n{len(scenarios) - len(differences)} of {len(scenarios)} scenarios give the same "
          f"result; {len(differences)} differ:")
    for name, theirs, ours in differences:
        print(f"\n{name}\n  pihace 1.0.0: {theirs}\n  pihace.py:    {ours}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
