"""The robot client SDK as a robot gets it: the ``odetoode-client`` wheel built from ``odetoode/pyproject.toml`` and
installed into a fresh virtual environment (its dependencies from the package index), then used against a real
server from outside the repository."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from odetoode.client import PolicyClient
from odetoode.testing.models import OBS, add_policy
from odetoode.testing.servers import RunningServer, running_server

ROOT = Path(__file__).resolve().parents[1]
SERVER_STACK = ("torch", "onnxruntime", "onnxruntime-gpu", "fastapi", "uvicorn", "starlette", "prometheus-client",
                "pydantic", "onnx", "odetoode")  # fmt: skip


def run(*cmd: str | Path, cwd: Path) -> str:
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def robot_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Python of a fresh venv with only the client wheel (and what it depends on) installed."""
    root = tmp_path_factory.mktemp("robot")
    # built from a copy: setuptools writes build/ and *.egg-info into the project it builds
    source = shutil.copytree(ROOT / "odetoode", root / "src", ignore=shutil.ignore_patterns("__pycache__", "build"))
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir",
        root / "dist", source, cwd=root)  # fmt: skip
    (wheel,) = (root / "dist").glob("odetoode_client-*.whl")
    run(sys.executable, "-m", "venv", root / "venv", cwd=root)
    python = root / "venv" / "bin" / "python"
    run(python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", wheel, cwd=root)
    return python


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repository = tmp_path_factory.mktemp("models")
    add_policy(repository, "policy")
    with running_server(repository) as running:
        yield running


def robot(python: Path, code: str, cwd: Path) -> str:
    # -I: no current directory, user site or PYTHON* variables on the path, so nothing of the repository leaks in
    return run(python, "-I", "-c", code, cwd=cwd)


def test_the_client_distribution_installs_only_the_odetoode_namespace(robot_python: Path, tmp_path: Path) -> None:
    code = (
        "import importlib.metadata as m, json\n"
        "files = m.distribution('odetoode-client').files\n"
        "print(json.dumps({'top': sorted({f.parts[0] for f in files if not f.parts[0].endswith('.dist-info')}),\n"
        "                  'files': sorted(str(f) for f in files),\n"
        "                  'installed': sorted(d.metadata['Name'].lower() for d in m.distributions())}))\n"
    )
    found = json.loads(robot(robot_python, code, tmp_path))
    assert found["top"] == ["odetoode"]
    assert "odetoode/__init__.py" not in found["files"]  # a namespace shared with the server's distribution
    assert "odetoode/client/policy.py" in found["files"] and "odetoode/proto/pool.py" in found["files"]
    assert not [f for f in found["files"] if f.startswith(("odetoode/testing", "odetoode/modelfile"))]
    assert {"odetoode-client", "grpcio", "protobuf", "numpy"} <= set(found["installed"])
    assert not set(SERVER_STACK) & set(found["installed"]), found["installed"]


def test_the_installed_client_acts_on_a_server(robot_python: Path, server: RunningServer, tmp_path: Path) -> None:
    observation = np.linspace(-1, 1, OBS).tolist()
    code = (
        "import json, odetoode.client as c\n"
        "assert 'site-packages' in c.__file__, c.__file__\n"
        f"with c.PolicyClient({server.grpc!r}, timeout=10) as client:\n"
        f"    action = client.act('policy', {observation!r}, sequence=7)\n"
        "    info = client.get_policy('policy')\n"
        "print(json.dumps({'action': action.values.tolist(), 'sequence': action.sequence,\n"
        "                  'observation_size': list(info.observation_space.shape)}))\n"
    )
    answer = json.loads(robot(robot_python, code, tmp_path))
    with PolicyClient(server.grpc, timeout=10) as client:
        expected = client.act("policy", observation).values
    assert answer["sequence"] == 7
    assert answer["observation_size"] == [OBS]
    np.testing.assert_array_equal(np.asarray(answer["action"], np.float32), expected)
