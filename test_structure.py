"""Tests of the source layout: src/pihace/ is what we edit, pihace.py what the generator
makes of it (tools/amalgamate.py), and the layering rules hold (tools/check_layers.py)."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "tools"))

import amalgamate  # noqa: E402
import check_layers  # noqa: E402


def test_the_committed_pihace_py_is_what_the_generator_makes():
    made = amalgamate.amalgamate()
    committed = (HERE / "pihace.py").read_text(encoding="utf-8")
    assert committed == made, ("pihace.py is stale: run `python3 tools/amalgamate.py` after "
                               "editing src/pihace/, and commit both")


def test_the_check_mode_names_the_fix_when_the_file_is_stale(tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(HERE / "src", tree / "src")
    shutil.copytree(HERE / "tools", tree / "tools")
    (tree / "pihace.py").write_text(amalgamate.amalgamate(), encoding="utf-8")
    check = [sys.executable, str(tree / "tools" / "amalgamate.py"), "--check"]
    assert subprocess.run(check, capture_output=True).returncode == 0
    errors = tree / "src" / "pihace" / "errors.py"
    errors.write_text(errors.read_text() + "\nEDITED = True\n")
    stale = subprocess.run(check, capture_output=True, text=True)
    assert stale.returncode == 1
    assert "python3 tools/amalgamate.py" in stale.stderr


def test_the_generated_file_names_each_module_in_dependency_order():
    text = (HERE / "pihace.py").read_text(encoding="utf-8")
    markers = [line for line in text.splitlines() if line.startswith("# (src/pihace/")]
    assert markers == [f"# (src/pihace/{name}.py)" for name in amalgamate.MODULES[1:]]
    assert "from ." not in text  # the modules' imports of each other are gone


def test_the_layering_holds():
    assert check_layers.violations() == []


@pytest.mark.parametrize("module, planted, expected", [
    ("errors", "from .cli import main\n", "errors.py:{line}: imports .cli, which comes after"),
    ("amqp_wire", "import socket\n", "amqp_wire.py:{line}: imports socket, but amqp_wire is sans-IO"),
    ("amqp_protocol", "def later():\n    import time\n",
     "amqp_protocol.py:{line2}: imports time, but amqp_protocol is sans-IO"),
    ("watcher", "def peek(connection):\n    return connection.protocol\n",
     "watcher.py:{line2}: reads .protocol"),
    ("pusher", "def peek(connection):\n    return connection._outbox\n",
     "pusher.py:{line2}: reads connection._outbox, a private attribute of another object"),
    ("client", "import select\n", "client.py:{line}: imports select: only the transport"),
])
def test_a_planted_violation_is_named_with_its_line(tmp_path, module, planted, expected):
    package = tmp_path / "pihace"
    shutil.copytree(HERE / "src" / "pihace", package)
    path = package / f"{module}.py"
    text = path.read_text()
    path.write_text(text + planted)
    line = text.count("\n") + 1
    found = check_layers.violations(package)
    assert any(expected.format(line=line, line2=line + 1) in problem for problem in found), found


def test_a_module_missing_from_the_order_is_named(tmp_path):
    package = tmp_path / "pihace"
    shutil.copytree(HERE / "src" / "pihace", package)
    (package / "stray.py").write_text("X = 1\n")
    assert check_layers.violations(package) == [
        "src/pihace/stray.py:1: not in MODULES of tools/amalgamate.py, so it is in no place of "
        "the generated pihace.py"]


def test_each_module_imports_every_name_it_uses_and_no_other():
    """pyflakes on each module: a name used but neither defined nor imported from a sibling
    is a module that cannot be read alone; an import nothing uses misleads the reader (header's __all__ names what later modules define)."""
    from pyflakes import api as pyflakes, reporter  # a test requirement

    class Collect(reporter.Reporter):
        def __init__(self):
            self.messages = []

        def flake(self, message):
            self.messages.append(str(message))

        def syntaxError(self, *args):  # noqa: N802 (pyflakes' name)
            self.messages.append(f"syntax error {args}")

        def unexpectedError(self, *args):  # noqa: N802
            self.messages.append(f"unexpected error {args}")

    collect = Collect()
    for name in amalgamate.MODULES:
        pyflakes.checkPath(str(HERE / "src" / "pihace" / f"{name}.py"), collect)
    wrong = [message for message in collect.messages
             if "in __all__" not in message and any(kind in message for kind in (
                 "undefined name", "unable to detect undefined names", "imported but unused",
                 "redefinition of unused"))]
    assert wrong == []


def test_all_names_only_what_pihace_py_defines():
    import pihace

    missing = [name for name in pihace.__all__ if not hasattr(pihace, name)]
    assert missing == [] and pihace.__all__ == sorted(pihace.__all__)
