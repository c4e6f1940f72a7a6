"""Packaging promises: the server imports without torch, tests and benchmarks import the project as installed, the
robot client installs on its own; the README's commands exist."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


SERVER_PACKAGES = ("service", "odetoode.client", "odetoode.proto", "odetoode.testing")
SERVER_MODULES = ("odetoode.modelfile", "odetoode.layout", "odetoode.telemetry_off")


def _modules(package: str) -> list[str]:
    """The package and every module in it, except ``__main__`` modules (a program to run, not a module to import)."""
    module = importlib.import_module(package)
    walked = [m.name for m in pkgutil.walk_packages(module.__path__, package + ".")]
    return [package] + [name for name in walked if not name.endswith(".__main__")]


def test_the_server_packages_import_without_torch() -> None:
    """Every module of the server, the client, the stubs and the test fixtures, with ``torch`` made unimportable."""
    modules = [m for package in SERVER_PACKAGES for m in _modules(package)] + list(SERVER_MODULES)
    assert "service.server" in modules and "odetoode.client.policy" in modules  # the walk found the packages
    code = (
        "import sys, importlib\n"
        "sys.modules['torch'] = None  # any import of torch now raises ImportError\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def _edits_sys_path(path: Path) -> bool:
    """Whether the module touches ``sys.path`` at all (reading it to edit it is the only reason a test would)."""
    tree = ast.parse(path.read_text(), str(path))
    return any(
        isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
        and node.value.id == "sys"
        for node in ast.walk(tree)
    )  # fmt: skip


def test_no_test_or_benchmark_module_edits_sys_path() -> None:
    """They import the project as it is installed (the fixtures and the benchmark harness are in odetoode.testing)."""
    modules = sorted((ROOT / "tests").rglob("*.py")) + sorted((ROOT / "benchmarks").rglob("*.py"))
    assert len(modules) > 40
    assert not [str(m.relative_to(ROOT)) for m in modules if _edits_sys_path(m)]


def test_readme_commands_are_make_targets() -> None:
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for target in set(re.findall(r"^\s*make ([a-z-]+)", readme, flags=re.M)):
        assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.M), f"README mentions make {target}"
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_local_links_in_the_docs_resolve() -> None:
    """Every figure and table the README and docs/ link to is committed (links are relative to their file)."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "models").rglob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            path = target.split("#", 1)[0]
            local = path and "://" not in path and not path.startswith("mailto:")
            if local and not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_generated_code_stays_at_the_wire() -> None:
    """Only the codecs and the gRPC servicers import the generated stubs; the core never sees a protobuf message."""
    at_the_wire = {"oip_codec.py", "policy_codec.py", "grpc_server.py", "policy_service.py"}
    importers = {
        p.name for p in (ROOT / "service").glob("*.py") if any(m.startswith("odetoode.proto") for m in _imports(p))
    }
    assert importers <= at_the_wire, sorted(importers - at_the_wire)
    assert {"oip_codec.py", "policy_codec.py"} <= importers  # the check sees imports at all
