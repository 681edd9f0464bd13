"""The package's folders are its layers: no module imports one of a layer above its own.

The allowed edges are those docs/architecture.md draws; a new import that crosses a
layer upwards (the engine reaching into the operations, storage into the runtime...)
fails here with the module and the import that does it.
"""

from __future__ import annotations

import ast

from tests.support import ROOT

PACKAGE = ROOT / "restmq"

# The leaves at the top of restmq/ may be imported by every layer and import only
# each other. Each layer may import the layers listed for it, its own and the leaves.
BELOW = {
    "storage": set(),
    "engine": {"storage"},
    "delivery": {"engine", "storage"},
    "operations": {"delivery", "engine", "storage"},
    "access": set(),
    # Stream transports subclass delivery's StreamConsumer and render engine messages.
    "web": {"operations", "delivery", "engine", "access"},
    "runtime": {"web", "operations", "delivery", "engine", "storage", "access"},
    # The command line and the Python client talk to a broker over HTTP only; the command
    # is built on the client.
    "cli": {"client"},
    "client": set(),
}


def layer_of(module: str) -> str:
    """``restmq.engine.queues`` -> ``engine``; a top-level module is a ``leaf``."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in BELOW:
        return parts[1]
    return "leaf"


def imports_of(path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("restmq"):
            names += [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names if alias.name.startswith("restmq")]
    return names


def module_name(path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_module_imports_a_layer_above_its_own():
    crossings = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = module_name(path)
        layer = layer_of(source)
        allowed = {layer, "leaf"} | BELOW.get(layer, set())
        for target in imports_of(path):
            if target == "restmq.__version__" and layer in ("cli", "client"):
                continue  # the version is the one thing the clients share
            if layer in ("cli", "client") and layer_of(target) == "leaf":
                crossings.append(f"{source} imports {target}: the client imports no broker module")
            elif layer_of(target) not in allowed:
                crossings.append(f"{source} ({layer}) imports {target} ({layer_of(target)})")
    assert crossings == []


def test_the_top_of_the_package_holds_at_most_eight_modules():
    loose = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(loose) <= 8, loose


def test_no_module_is_longer_than_600_lines():
    long = {
        str(path.relative_to(ROOT)): count
        for path in PACKAGE.rglob("*.py")
        if (count := len(path.read_text("utf-8").splitlines())) > 600
    }
    assert long == {}
