"""Tests of pihace.py, in the order of the module's sections."""

import asyncio
import calendar
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import types

import pytest

import pihace

HERE = os.path.dirname(os.path.abspath(__file__))


def run_python(code, *args, cwd=None, env_extra=None, timeout=60):
    """Run code in a fresh interpreter that sees only a copy of pihace.py."""
    env = dict(os.environ, PYTHONPATH=cwd or HERE, **(env_extra or {}))
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          cwd=cwd or HERE, env=env, timeout=timeout)


@pytest.fixture
def lone_copy(tmp_path):
    """A folder holding nothing but a copy of pihace.py."""
    shutil.copy(os.path.join(HERE, "pihace.py"), tmp_path)
    return str(tmp_path)


@pytest.fixture
def release():
    """An event that hung checkers wait on; set at teardown so their threads end."""
    event = threading.Event()
    yield event
    event.set()


# ---------------------------------------------------------------------------
# header: standard library only, Python 3.8+, pihace 1.0.0's import paths
# ---------------------------------------------------------------------------

def test_imports_of_pihace_1_0_0_work_with_only_the_file(lone_copy):
    code = (
        "import sys; sys.modules['psutil'] = None\n"
        "from pihace.healthcheck import HealthCheck\n"
        "from pihace.pusher.messaging import AMQPPusher\n"
        "from pihace import HealthCheck as H2, AMQPPusher as A2\n"
        "from pihace.system_info import get_system_info\n"
        "from pihace.utils import get_utc_timestamp, calculate_status, format_rate\n"
        "import pihace.pusher.messaging, pihace.healthcheck\n"
        "assert HealthCheck is H2 is pihace.healthcheck.HealthCheck\n"
        "assert AMQPPusher is A2 is pihace.pusher.messaging.AMQPPusher\n"
        "assert pihace.psutil is None\n"
        "print(pihace.__file__)\n"
    )
    result = run_python(code, cwd=lone_copy)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == os.path.join(lone_copy, "pihace.py")


def test_pihace_imports_only_the_standard_library_and_not_ssl_or_asyncio(lone_copy):
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import pihace\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "std = set(sys.stdlib_module_names) | {'pihace', 'psutil'}\n"
        "print(sorted(new - std), 'ssl' in sys.modules, 'asyncio' in sys.modules)\n"
    )
    result = run_python(code, cwd=lone_copy)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[] False False"


def test_source_is_python_3_8_compatible():
    vermin = shutil.which("vermin")
    assert vermin, "vermin is a test requirement: pip install -r requirements-test.txt"
    result = subprocess.run([vermin, "--no-tips", "--violations", "-t=3.8-",
                             "--eval-annotations", os.path.join(HERE, "pihace.py")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_deprecation_warnings_in_use(lone_copy):
    code = (
        "import asyncio, pihace\n"
        "hc = pihace.HealthCheck(with_system=True, name='a', version='1')\n"
        "async def ok(): return True\n"
        "hc.register('sync', lambda: True)\n"
        "hc.register('async', ok)\n"
        "hc.check('json'); hc.check('str')\n"
        "async def main():\n"
        "    hc.check(); await hc.check_async()\n"
        "asyncio.run(main())\n"
    )
    result = run_python("import warnings; warnings.simplefilter('error')\n" + code, cwd=lone_copy)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------
# system information
# ---------------------------------------------------------------------------

SYSTEM_FORMATS = {
    "cpu_usage": r"\d+(\.\d)?%",
    "memory_usage": r"\d+(\.\d)?%",
    "memory_available": r"\d+(\.\d+)? MB",
    "disk_usage": r"\d+(\.\d)?%",
    "disk_available": r"\d+(\.\d+)? GB",
    "python_version": r"3\.\d+",
}


def assert_system_formats(system):
    assert set(system) == set(SYSTEM_FORMATS) | {"os", "os_version"}
    for key, pattern in SYSTEM_FORMATS.items():
        assert re.fullmatch(pattern, system[key]), (key, system[key])
    assert system["os"] and system["os_version"]
    assert system["python_version"] == "%d.%d" % sys.version_info[:2]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_system_info_without_psutil_comes_from_proc():
    info = pihace.SystemInfo(psutil_module=None)
    assert_system_formats(info.read())


def test_system_info_without_psutil_in_a_fresh_interpreter(lone_copy):
    code = ("import sys, json; sys.modules['psutil'] = None\n"
            "import pihace\n"
            "print(json.dumps(pihace.HealthCheck(with_system=True).check()['system']))\n")
    result = run_python(code, cwd=lone_copy)
    assert result.returncode == 0, result.stderr
    assert_system_formats(json.loads(result.stdout))


def test_system_info_with_real_psutil():
    real_psutil = pytest.importorskip("psutil")
    assert_system_formats(pihace.SystemInfo(psutil_module=real_psutil).read())


class FakePsutil:
    """A psutil whose CPU counters the test moves by hand."""

    def __init__(self):
        self.user, self.idle = 100.0, 300.0

    def cpu_times(self):
        fields = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
                  "guest", "guest_nice")
        values = dict.fromkeys(fields, 0.0)
        values.update(user=self.user, idle=self.idle, guest=7.0)  # guest is inside user
        return _Times(values)

    def virtual_memory(self):
        return types.SimpleNamespace(percent=41.0, available=1234.5678 * 1024 ** 2)


class _Times(tuple):
    """Like psutil's named tuple: iterable and with named fields."""

    def __new__(cls, values):
        self = super().__new__(cls, values.values())
        self.__dict__.update(values)
        return self


def test_cpu_usage_is_the_delta_since_the_previous_sample_and_never_blocks():
    fake = FakePsutil()
    info = pihace.SystemInfo(psutil_module=fake)
    assert info.read()["cpu_usage"] == "25.0%"  # since boot: 100 busy of 400
    fake.user += 30
    fake.idle += 10
    started = time.perf_counter()
    system = info.read()
    assert time.perf_counter() - started < 0.5
    assert system["cpu_usage"] == "75.0%"  # 30 busy of 40
    assert info.read()["cpu_usage"] == "75.0%"  # no time passed: the last figure stands
    assert system["memory_usage"] == "41.0%"
    assert system["memory_available"] == "1234.57 MB"


def test_a_figure_that_cannot_be_measured_is_none_and_the_schema_stays():
    class Broken:
        def cpu_times(self):
            raise OSError("no counters here")

        def virtual_memory(self):
            raise OSError("no memory figures here")

    system = pihace.SystemInfo(psutil_module=Broken(), disk_path="/no/such/disk").read()
    assert set(system) == set(SYSTEM_FORMATS) | {"os", "os_version"}
    for key in ("cpu_usage", "memory_usage", "memory_available", "disk_usage", "disk_available"):
        assert system[key] is None


def test_pihace_1_0_0_system_info_function():
    assert_system_formats(pihace.get_system_info())


# ---------------------------------------------------------------------------
# health checks: the report
# ---------------------------------------------------------------------------

def test_statuses_rates_and_failures():
    healthy = pihace.HealthCheck()
    assert healthy.check()["status"] == "Available"
    assert healthy.check()["rate"] == "0/0"
    healthy.register("a", lambda: True)
    report = healthy.check()
    assert (report["status"], report["rate"], report["failure"]) == ("Available", "1/1", None)

    partial = pihace.HealthCheck()
    partial.register("ok", lambda: True)
    partial.register("bad", lambda: (False, "db down"), retries=0)
    report = partial.check()
    assert (report["status"], report["rate"]) == ("Partially Available", "1/2")
    assert report["failure"] == {"bad": "db down"}

    down = pihace.HealthCheck()
    down.register("bad", lambda: False, retries=0)
    report = down.check()
    assert (report["status"], report["rate"]) == ("Unavailable", "0/1")
    assert report["failure"] == {"bad": "checker returned False"}


def test_report_keys_timestamp_component_and_checks():
    hc = pihace.HealthCheck(name="MyApp", version="1.0.0")
    hc.register("example", lambda: (True, "fine"))
    before = time.time()
    report = hc.check()
    assert list(report)[:7] == ["status", "timestamp", "failure", "rate", "duration", "system",
                                "component"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", report["timestamp"])
    stamp = calendar.timegm(time.strptime(report["timestamp"][:19], "%Y-%m-%dT%H:%M:%S"))
    assert before - 1 <= stamp <= time.time()
    assert report["system"] is None
    assert report["component"] == {"name": "MyApp", "version": "1.0.0"}
    assert isinstance(report["duration"], float)
    check = report["checks"]["example"]
    assert check["status"] == "pass" and check["attempts"] == 1 and check["message"] == "fine"
    assert pihace.HealthCheck(name="only-name").check()["component"] is None


def test_timestamp_is_utc():
    assert pihace.get_utc_timestamp(0) == "1970-01-01T00:00:00.000000Z"
    assert pihace.get_utc_timestamp(1777638896.789123) == "2026-05-01T12:34:56.789123Z"


def test_duration_covers_system_information():
    class SlowSystem:
        def read(self):
            time.sleep(0.05)  # simulated work, not synchronisation
            return {}

    report = pihace.HealthCheck(with_system=True, system_info=SlowSystem()).check()
    assert report["duration"] >= 0.05


def test_output_formats():
    hc = pihace.HealthCheck(with_system=True, name="MyApp", version="2")
    hc.register("bad", lambda: (False, "disk on fire"), retries=0)
    as_json = hc.check(output="json")
    assert json.loads(as_json)["failure"] == {"bad": "disk on fire"}
    assert "\n    " in as_json
    assert "\n" not in hc.check(output="json", pretty=False)
    text = hc.check(output="str")
    assert text.startswith("Status: Unavailable (0/1 healthy)\nTimestamp: ")
    assert " - bad: disk on fire" in text
    assert "Component: MyApp 2" in text
    assert "System: CPU " in text
    with pytest.raises(ValueError) as raised:
        hc.check(output="yaml")
    assert "yaml" in str(raised.value)


def test_register_validates_its_arguments():
    hc = pihace.HealthCheck()
    with pytest.raises(ValueError):
        hc.register("x", "not callable")
    with pytest.raises(ValueError) as raised:
        hc.register("x", lambda: True, timeout=0)
    assert "timeout" in str(raised.value)
    with pytest.raises(ValueError) as raised:
        hc.register("x", lambda: True, retries=-1)
    assert "retries" in str(raised.value)
    assert hc.checkers == {}


# ---------------------------------------------------------------------------
# health checks: the checker contract
# ---------------------------------------------------------------------------

async def async_ok():
    return True


class AsyncCallable:
    async def __call__(self):
        await asyncio.sleep(0)
        return False, "async object says no"


def sync_returning_coroutine():
    return async_ok()


class Unprintable:
    def __str__(self):
        raise RuntimeError("cannot show")

    __repr__ = __str__


@pytest.mark.parametrize("checker, passed, message", [
    (lambda: True, True, None),
    (lambda: (True, "detail"), True, "detail"),
    (lambda: False, False, "checker returned False"),
    (lambda: (False, "why"), False, "why"),
    (lambda: 1 / 0, False, "ZeroDivisionError: division by zero"),
    (lambda: (False, b"bytes \xff"), False, "bytes \ufffd"),
    (lambda: (False, 42), False, "42"),
    (lambda: (False, Unprintable()), False, "<Unprintable that cannot be shown>"),
    (async_ok, True, None),
    (functools.partial(async_ok), True, None),
    (AsyncCallable(), False, "async object says no"),
    (sync_returning_coroutine, True, None),
])
def test_checker_results(checker, passed, message):
    hc = pihace.HealthCheck()
    hc.register("c", checker, retries=0)
    report = json.loads(hc.check("json"))
    assert report["checks"]["c"]["status"] == ("pass" if passed else "fail")
    assert report["checks"]["c"]["message"] == message


@pytest.mark.parametrize("value, shown", [
    (None, "None"), ("yes", "'yes'"), ((True,), "(True,)"), ({"ok": True}, "{'ok': True}"),
    ((True, "a", "b"), "(True, 'a', 'b')"),
])
def test_anything_else_is_a_failure_that_says_what_came_back(value, shown):
    hc = pihace.HealthCheck()
    hc.register("odd", lambda: value, retries=0)
    hc.register("fine", lambda: True)
    report = hc.check()
    reason = report["failure"]["odd"]
    assert reason.startswith(f"checker returned {shown} ")
    assert "expected True" in reason
    assert report["status"] == "Partially Available"


def test_huge_reasons_are_cut_and_stay_json():
    hc = pihace.HealthCheck()
    hc.register("big", lambda: (False, "x" * 10_000_000), retries=0)
    reason = json.loads(hc.check("json"))["failure"]["big"]
    assert len(reason) < 3000 and reason.endswith("more characters)")


# ---------------------------------------------------------------------------
# health checks: timeouts and retries
# ---------------------------------------------------------------------------

def test_a_hung_sync_checker_is_bounded_and_never_started_twice(release):
    calls = []

    def hangs():
        calls.append(1)
        release.wait()
        return True

    hc = pihace.HealthCheck()
    hc.register("hangs", hangs, timeout=0.2, retries=1)
    hc.register("fine", lambda: True)
    threads_before = threading.active_count()
    for _ in range(3):
        started = time.monotonic()
        report = hc.check()
        assert time.monotonic() - started < 0.2 * 2 + 0.5
        assert report["failure"]["hangs"].startswith("timed out after 0.2s")
        assert report["checks"]["hangs"]["attempts"] == 2
        assert report["status"] == "Partially Available"
    assert len(calls) == 1
    assert "still running since an earlier check" in report["failure"]["hangs"]
    assert threading.active_count() <= threads_before + 1


def test_a_later_check_gets_the_result_of_the_run_still_going(release):
    def slow():
        release.wait()
        return True, "finally"

    hc = pihace.HealthCheck()
    hc.register("slow", slow, timeout=0.1, retries=0)
    assert hc.check()["status"] == "Unavailable"
    release.set()
    report = hc.check()
    assert report["status"] == "Available"


def test_a_hung_async_checker_is_cancelled_at_its_timeout():
    cancelled = threading.Event()

    async def hangs():
        try:
            await asyncio.sleep(1000)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    hc = pihace.HealthCheck()
    hc.register("hangs", hangs, timeout=0.1, retries=2)
    started = time.monotonic()
    report = hc.check()
    assert time.monotonic() - started < 0.3 + 0.5
    assert report["failure"] == {"hangs": "timed out after 0.1s"}
    assert cancelled.wait(5)


def test_retries_are_extra_attempts_after_any_failure():
    outcomes = iter([ZeroDivisionError("first"), (False, "second"), True])

    def flaky():
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    hc = pihace.HealthCheck()
    hc.register("flaky", flaky, retries=2)
    check = hc.check()["checks"]["flaky"]
    assert (check["status"], check["attempts"]) == ("pass", 3)

    attempts = []
    once = pihace.HealthCheck()
    once.register("once", lambda: attempts.append(1) or False, retries=0)
    assert once.check()["checks"]["once"]["attempts"] == 1 and len(attempts) == 1


def test_checkers_run_at_the_same_time():
    barrier = threading.Barrier(20, timeout=5)
    hc = pihace.HealthCheck()
    for index in range(20):
        hc.register(f"c{index}", lambda: barrier.wait() >= 0, timeout=5)
    assert hc.check()["rate"] == "20/20"  # only possible if all 20 ran at once


# ---------------------------------------------------------------------------
# health checks: callable from anywhere
# ---------------------------------------------------------------------------

def make_mixed_check():
    hc = pihace.HealthCheck(name="x", version="1")
    hc.register("sync", lambda: True)
    hc.register("async", async_ok)
    return hc


def test_check_from_many_threads_at_once():
    hc = make_mixed_check()
    reports = []
    threads = [threading.Thread(target=lambda: reports.append(hc.check())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert [r["rate"] for r in reports] == ["2/2"] * 8


def test_check_inside_a_running_event_loop_and_check_async():
    hc = make_mixed_check()

    async def main():
        blocking = hc.check()
        awaited = await hc.check_async(output="json")
        return blocking, json.loads(awaited)

    blocking, awaited = asyncio.run(main())
    assert blocking["rate"] == awaited["rate"] == "2/2"


def test_check_async_does_not_block_the_loop(release):
    hc = pihace.HealthCheck()
    hc.register("slow", lambda: release.wait(5), timeout=5)

    async def main():
        task = asyncio.ensure_future(hc.check_async())
        await asyncio.sleep(0)  # the loop still runs while the check waits
        release.set()
        return await task

    assert asyncio.run(main())["status"] == "Available"


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------

def test_running_the_file_prints_the_local_report(lone_copy):
    result = subprocess.run([sys.executable, os.path.join(lone_copy, "pihace.py")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "Available"
    assert_system_formats(report["system"])
