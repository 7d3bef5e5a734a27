"""Dependencies point one way: app <- links <- offers <- signing, and workers on top.

Only the composition roots (the app factory and the CLI) may reach up, and only from
inside a function. Service modules stay free of Flask and the provider SDKs.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"app": 0, "links": 1, "offers": 2, "signing": 3, "workers": 4}
COMPOSITION_ROOTS = {"app/__init__.py", "app/cli.py", "app/devrun.py"}
FRAMEWORK_FREE = ("flask", "twilio", "sendgrid", "werkzeug")


def imports(source: str) -> list[tuple[str, bool]]:
    """(imported module, is at module level) for every import in ``source``."""
    tree = ast.parse(source)
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = top and not isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
            )
            if isinstance(child, ast.Import):
                found.extend((alias.name, top) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.append((child.module, top))
            visit(child, inner)

    visit(tree, True)
    return found


def violations(path: str, source: str) -> list[str]:
    layer = path.split("/", 1)[0]
    rank = LAYERS[layer]
    problems = []
    for module, top in imports(source):
        target = module.split(".", 1)[0]
        if target in LAYERS and LAYERS[target] > rank:
            if path in COMPOSITION_ROOTS and not top:
                continue
            problems.append(f"{path} imports {module} ({layer} may not depend on {target})")
        if path.endswith("service.py") and target in FRAMEWORK_FREE:
            problems.append(f"{path} imports {module}: services stay framework-free")
    return problems


def project_files() -> list[Path]:
    return sorted(p for layer in LAYERS for p in (ROOT / layer).rglob("*.py"))


def test_dependencies_point_one_way():
    problems = []
    for path in project_files():
        rel = path.relative_to(ROOT).as_posix()
        problems += violations(rel, path.read_text())
    assert problems == []


def test_the_check_catches_violations():
    assert violations("app/models.py", "from links.models import PaymentLink\n")
    assert violations("links/views.py", "import workers.jobs\n")
    assert violations("app/queue.py", "def f():\n    import offers\n")
    assert violations("offers/service.py", "from flask import request\n")
    assert not violations("app/__init__.py", "def f():\n    from links import views\n")
    assert violations("app/__init__.py", "from links import views\n")
    assert not violations("signing/service.py", "from offers.models import Offer\n")


def test_nothing_connects_at_import():
    # In a fresh interpreter, importing every module must open no socket and start nothing.
    modules = [
        p.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".").removesuffix(".__init__")
        for p in project_files()
    ]
    script = (
        "import socket, subprocess, importlib, sys\n"
        "def refuse(*a, **k):\n"
        "    raise SystemExit('connected or spawned at import: %r' % (a,))\n"
        "socket.socket.connect = refuse\n"
        "subprocess.Popen.__init__ = refuse\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print('imported', len(sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("imported")
