"""Check the layering of src/pihace/ from the modules' own imports; print each violation.

    python3 tools/check_layers.py     exit 1 when a rule is broken, naming file, line and rule

The rules:
- a module imports only modules before it in tools/amalgamate.py's MODULES (no cycle, no
  forward reference), and every module of src/pihace/ is in that list;
- the AMQP wire and protocol modules are sans-IO: they import no socket, ssl, select,
  threading or time, not even inside a function;
- the AMQP client code above the transport (client, pusher, watcher) touches no socket: it
  imports no socket, ssl or select, reads no `.sock` or `.protocol`, and no private
  attribute of another object (a namedtuple's `_fields`, `_replace`, `_asdict` aside).
"""

import ast
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from amalgamate import MODULES, PACKAGE  # noqa: E402

SANS_IO = {"amqp_wire", "amqp_protocol"}
NO_IO_MODULES = {"socket", "ssl", "select", "threading", "time"}
ABOVE_TRANSPORT = {"client", "pusher", "watcher"}
NO_SOCKET_MODULES = {"socket", "ssl", "select"}
NAMEDTUPLE_ATTRIBUTES = {"_fields", "_replace", "_asdict", "_make"}


def _imported_modules(node):
    """The top-level names of the modules an import statement brings in."""
    if isinstance(node, ast.Import):
        return [alias.name.split(".")[0] for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [node.module.split(".")[0]]
    return []


def violations(package=PACKAGE, order=MODULES):
    """One line per broken rule: 'src/pihace/<module>.py:<line>: <what is wrong>'."""
    found = []
    present = sorted(path.stem for path in pathlib.Path(package).glob("*.py")
                     if path.stem != "__init__")
    for name in present:
        if name not in order:
            found.append(f"src/pihace/{name}.py:1: not in MODULES of tools/amalgamate.py, so "
                         "it is in no place of the generated pihace.py")
    for position, name in enumerate(order):
        path = pathlib.Path(package) / f"{name}.py"
        if not path.exists():
            found.append(f"src/pihace/{name}.py:1: listed in MODULES but missing")
            continue
        where = f"src/pihace/{name}.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level:
                sibling = (node.module or "").split(".")[0]
                if sibling not in order:
                    found.append(f"{where}:{node.lineno}: imports .{sibling}, which is not a "
                                 "module of the package")
                elif order.index(sibling) >= position:
                    found.append(f"{where}:{node.lineno}: imports .{sibling}, which comes after "
                                 f"{name} in the layering (a module uses only those before it)")
            for module in _imported_modules(node):
                if name in SANS_IO and module in NO_IO_MODULES:
                    found.append(f"{where}:{node.lineno}: imports {module}, but {name} is sans-IO "
                                 "(no socket, ssl, select, threading or time)")
                if name in ABOVE_TRANSPORT and module in NO_SOCKET_MODULES:
                    found.append(f"{where}:{node.lineno}: imports {module}: only the transport "
                                 "touches sockets")
            if name in ABOVE_TRANSPORT and isinstance(node, ast.Attribute):
                owner = node.value.id if isinstance(node.value, ast.Name) else None
                if node.attr in ("sock", "protocol"):
                    found.append(f"{where}:{node.lineno}: reads .{node.attr}: only the transport "
                                 "touches the socket and the protocol object")
                elif (node.attr.startswith("_") and not node.attr.startswith("__")
                      and owner not in ("self", "cls") and node.attr not in NAMEDTUPLE_ATTRIBUTES):
                    found.append(f"{where}:{node.lineno}: reads {ast.unparse(node)}, a private "
                                 "attribute of another object: ask its owner instead")
    return found


if __name__ == "__main__":
    problems = violations()
    print("\n".join(problems) or "layering: every rule holds")
    sys.exit(1 if problems else 0)
