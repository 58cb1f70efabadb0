"""The README's examples run as written (issue 22).

Every fenced ```python and ```sh block of README.md runs, each in an empty temporary folder
holding a copy of pihace.py: importable by a Python block, `python3 pihace.py` for a shell
block, and a `pihace` command on the PATH (what `pip install .` gives). Two substitutions point
the examples at this suite's own servers, and nothing else is changed:

- `localhost:5672`, the broker of every example's URL, becomes the `rabbit` fixture's
  host:port (conftest.py: a private RabbitMQ node, or PIHACE_TEST_AMQP_URL);
- `port=8000`, the HTTP server example's port, becomes a free port.

The README's fence info says how a block is run (documented in its "The examples in this
README"):

- ```python / ```sh: runs to its end; it must exit with 0 and print no traceback (a shell
  block runs under `bash -e -u -o pipefail`). A block that pushes (`.push()`) must leave a
  report in the queue `pihace.healthcheck`; a block that reads reports (a pika consumer,
  `pihace watch`) finds one published before it starts, and must print something.
- ```python until-ctrl-c: runs until Ctrl-C. The test waits, with a deadline, until it has
  done its job (its reports in the queue, an HTTP answer, a device seen), then sends SIGINT:
  it must end, cleanly or with Python's own KeyboardInterrupt and nothing else.
- ```sh no-run / ```python no-run: not run (it installs into the environment, runs this suite,
  writes into the checkout, or runs until stopped); the README says so beside it.
- Any other fence (yaml, ini, json, text) is a file or an output sample, never run.
"""

from __future__ import annotations

import configparser
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pika
import pytest

import pihace
import rabbitnode

HERE = pathlib.Path(__file__).resolve().parent
README = HERE / "README.md"
QUEUE = "pihace.healthcheck"
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```$", re.S | re.M)
KNOWN_FLAGS = {"no-run", "until-ctrl-c"}
NOT_PROGRAMS = {"yaml", "ini", "json", "text"}


class Block:
    def __init__(self, info: str, body: str, line: int) -> None:
        words = info.split()
        self.lang = words[0] if words else ""
        self.flags = set(words[1:])
        self.body = body
        self.line = line

    @property
    def runs(self) -> bool:
        return self.lang in ("python", "sh") and "no-run" not in self.flags

    @property
    def id(self) -> str:
        return f"{self.lang}-line{self.line}"


def readme_blocks(text: str | None = None) -> list[Block]:
    if text is None:
        text = README.read_text(encoding="utf-8")
    return [Block(match.group(1), match.group(2), text.count("\n", 0, match.start()) + 1)
            for match in FENCE.finditer(text)]


RUNNABLE = [block for block in readme_blocks() if block.runs]


# ---------------------------------------------------------------------------
# what the README's fences say
# ---------------------------------------------------------------------------

def test_every_block_of_the_readme_is_a_program_or_says_what_it_is():
    blocks = readme_blocks()
    for block in blocks:
        assert block.lang in {"python", "sh"} | NOT_PROGRAMS, (block.line, block.lang)
        assert block.flags <= KNOWN_FLAGS, (block.line, block.flags)
        if block.flags:
            assert block.lang in ("python", "sh"), (block.line, block.flags)
    assert len(RUNNABLE) >= 10
    # few, and each one's reason is in the README beside it or in the legend
    assert len([block for block in blocks if "no-run" in block.flags]) <= 6


def test_the_readmes_fences_are_read_as_written():
    text = "a\n```python\nprint(1)\n```\n\n```sh no-run\nrm -rf /\n```\n```text\nout\n```\n"
    blocks = readme_blocks(text)
    assert [(b.lang, b.flags, b.body, b.line, b.runs) for b in blocks] == [
        ("python", set(), "print(1)\n", 2, True),
        ("sh", {"no-run"}, "rm -rf /\n", 6, False),
        ("text", set(), "out\n", 9, False)]


def test_ci_runs_the_test_command_the_readme_names():
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Tests\n", 1)[1]
    command = readme_blocks(section)[0].body.strip()
    assert command == "bash .ci/setup && python3 -m pytest -q"
    ci = (HERE / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert command in ci
    assert "## Contributing: edit `src/`, generate, test" in text


def test_the_readme_stays_a_front_door_and_links_its_pages():
    text = README.read_text(encoding="utf-8")
    assert len(text.encode("utf-8")) < 45_000
    for page in ("docs/performance.md", "docs/differences.md", "docs/testing.md",
                 "docs/reference.md"):
        assert (HERE / page).is_file(), page
        assert f"]({page})" in text, page
    # every link to a section of the README names a heading that exists (GitHub's anchors)
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        anchor = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchors.add(anchor)
    for link in re.findall(r"\]\(#([^)]+)\)", text):
        assert link in anchors, link


# ---------------------------------------------------------------------------
# running the blocks
# ---------------------------------------------------------------------------

def broker_address(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.hostname}:{parts.port or 5672}"


def queue_depth(url: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return connection.channel().queue_declare(QUEUE, durable=True).method.message_count
    finally:
        connection.close()


def delete_queue(url: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        connection.channel().queue_delete(QUEUE)
    finally:
        connection.close()


def publish_one_report(url: str) -> None:
    hc = pihace.HealthCheck(name="readme-test", version="1")
    hc.register("example", lambda: True)
    with pihace.AMQPPusher(hc, url, QUEUE) as pusher:
        assert pusher.push() is True


def until(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        time.sleep(0.1)  # polling a condition with a deadline, not waiting for an effect


def folder_for(tmp_path: pathlib.Path) -> dict:
    """The block's folder: a copy of pihace.py, and `pihace` and `python3` on the PATH."""
    shutil.copy(HERE / "pihace.py", tmp_path / "pihace.py")
    bin_dir = tmp_path / ".bin"
    bin_dir.mkdir()
    for name, target in (("pihace", f'"{sys.executable}" "{tmp_path / "pihace.py"}"'),
                         ("python3", f'"{sys.executable}"')):
        command = bin_dir / name
        command.write_text(f'#!/bin/sh\nexec {target} "$@"\n')
        command.chmod(0o755)
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PIHACE_", "PYTHONPATH"))}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def substituted(body: str, rabbit_url: str, http_port: int) -> str:
    return (body.replace("localhost:5672", broker_address(rabbit_url))
            .replace("port=8000", f"port={http_port}"))


def command_for(block: Block, path: pathlib.Path) -> list:
    if block.lang == "python":
        return [sys.executable, str(path)]
    return ["bash", "-e", "-u", "-o", "pipefail", str(path)]


class Output:
    """A child's stdout or stderr, read by a thread as it comes."""

    def __init__(self, stream) -> None:
        self.text = ""
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in iter(stream.readline, ""):
            self.text += line

    def join(self) -> str:
        self._thread.join(10)
        return self.text


@pytest.mark.parametrize("block", RUNNABLE, ids=[block.id for block in RUNNABLE])
def test_a_readme_block_runs_as_written(block, rabbit, tmp_path):
    env = folder_for(tmp_path)
    http_port = rabbitnode.free_port()
    source = tmp_path / ("block.py" if block.lang == "python" else "block.sh")
    source.write_text(substituted(block.body, rabbit.url, http_port), encoding="utf-8")
    delete_queue(rabbit.url)
    reads = "consume(" in block.body or "pihace watch" in block.body or "Watcher(" in block.body
    if reads:
        publish_one_report(rabbit.url)

    if "until-ctrl-c" not in block.flags:
        result = subprocess.run(command_for(block, source), cwd=tmp_path, env=env, text=True,
                                capture_output=True, timeout=120)
        assert result.returncode == 0, (block.line, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, (block.line, result.stderr)
        if ".push()" in block.body:
            assert queue_depth(rabbit.url) >= 1, block.line
        if reads:
            assert result.stdout.strip(), block.line
        return

    process = subprocess.Popen(command_for(block, source), cwd=tmp_path, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = Output(process.stdout), Output(process.stderr)
    try:
        def alive() -> bool:
            assert process.poll() is None, (block.line, stdout.join(), stderr.join())
            return True

        if "HealthServer" in block.body:
            def answers() -> bool:
                alive()
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/livez",
                                                timeout=5) as response:
                        return response.status == 200
                except (urllib.error.URLError, ConnectionError):
                    return False
            until(answers, 30, "the server answers /livez")
        elif "Watcher(" in block.body:
            until(lambda: alive() and " -> " in stdout.text, 30, "a device's change printed")
        elif "push_forever_in_loop" in block.body:
            wanted = 2 if ".push()" in block.body else 1  # push() once, then the loop's first
            until(lambda: alive() and queue_depth(rabbit.url) >= wanted, 30,
                  f"{wanted} reports in the queue")
        else:
            pytest.fail(f"line {block.line}: until-ctrl-c, but no sign of its job is known")
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    err = stderr.join()
    stdout.join()
    if code != 0:
        assert err.rstrip().splitlines()[-1] == "KeyboardInterrupt", (block.line, code, err)
        assert err.count("Traceback") == 1, (block.line, err)
    else:
        assert "Traceback" not in err, (block.line, err)


# ---------------------------------------------------------------------------
# pip install '.[yaml]' gives what pihace --config needs
# ---------------------------------------------------------------------------

def test_the_yaml_extra_brings_pyyaml_and_the_readmes_config_loads_with_it(tmp_path):
    setup = configparser.ConfigParser()
    setup.read(HERE / "setup.cfg")
    extras = {name: value.split() for name, value in setup["options.extras_require"].items()}
    assert extras == {"system": ["psutil"], "yaml": ["PyYAML"]}

    import yaml  # what the extra installs; a test requirement too
    # The README's config sample is YAML that is not JSON: only PyYAML reads it.
    sample, = [block.body for block in readme_blocks() if block.lang == "yaml"
               and block.body.startswith("instance:")]
    with pytest.raises(ValueError):
        json.loads(sample)
    assert yaml.safe_load(sample)["instance"]["name"] == "my_app"
    path = tmp_path / "config.yml"
    path.write_text(sample, encoding="utf-8")
    from pihace.loader import load_healthcheck_from_yaml
    built = load_healthcheck_from_yaml(str(path))
    assert built["healthcheck"].component_name == "my_app"
    assert list(built["healthcheck"].checkers) == ["Example_HTTP_Check"]
    assert len(built["providers"]) == 1 and len(built["pushers"]) == 1
    assert "yaml" in README.read_text(encoding="utf-8").split("## Set-up", 1)[1][:2000]
