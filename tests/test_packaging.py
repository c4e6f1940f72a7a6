"""Packaging promises: the serving half imports without torch; the README's commands exist."""

from __future__ import annotations

import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import service

ROOT = Path(__file__).resolve().parents[1]


def test_service_and_format_import_without_torch() -> None:
    modules = ["odetoode", "odetoode.modelfile", "service"] + [
        f"service.{m.name}"
        for m in pkgutil.iter_modules(service.__path__)
        if not m.name.startswith("_") and m.name not in ("__main__", "demo")
    ]
    code = (
        "import sys, importlib\n"
        "sys.modules['torch'] = None  # any import of torch now raises ImportError\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


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


def test_robot_client_imports_without_the_server_stack() -> None:
    """``pip install odetoode[client]`` on a robot: grpcio, protobuf, numpy (httpx for REST) -- nothing else."""
    blocked = ["torch", "onnxruntime", "fastapi", "uvicorn", "prometheus_client", "pydantic", "onnx", "yaml"]
    code = (
        "import sys\n"
        f"for m in {blocked!r}: sys.modules[m] = None\n"
        "import service.client as c\n"
        "assert c.PolicyClient and c.AsyncPolicyClient and c.RestClient\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
