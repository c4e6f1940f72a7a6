"""Nothing phones home: ONNX Runtime's telemetry is off in every entry point of the project.

ONNX Runtime 1.29+ on Linux sends usage events and writes a device id and an event cache under
``$XDG_CACHE_HOME/Microsoft/DeveloperTools`` (``$HOME/.cache`` when that is unset) as soon as it is imported, unless
``ORT_DISABLE_TELEMETRY=1`` is in the environment first. Each check runs a child process under a fresh ``HOME`` with
``XDG_CACHE_HOME`` pointing into it (CI machines commonly set their own) and the opt-out removed from its environment
(the suite itself has it set), and looks for the cache afterwards: the control proves the check can fail; the others
import or run each entry point the way a user would.

ONNX Runtime also stays quiet on its own when it sees a CI system's marker variable (``CI``, ``GITHUB_ACTIONS``, ...,
listed in its binary next to the opt-out), so the children run without those too: on a CI machine the checks would
otherwise pass whatever the project did, and the control would fail.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from odetoode.testing.clients import observation_json
from odetoode.testing.models import add_policy
from odetoode.testing.servers import child_env, server_process

ROOT = Path(__file__).resolve().parents[1]

TELEMETRY = Path(".cache") / "Microsoft" / "DeveloperTools"
# The variables by which ONNX Runtime 1.32 recognises a CI run and turns its telemetry off by itself.
CI_MARKERS = ("CI", "TF_BUILD", "GITHUB_ACTIONS", "GITLAB_CI", "CIRCLECI", "TRAVIS", "JENKINS_URL",
              "CODEBUILD_BUILD_ID", "BUILDKITE", "TEAMCITY_VERSION", "APPVEYOR", "BITBUCKET_BUILD_NUMBER")  # fmt: skip
BUNDLED_POLICY = ROOT / "models" / "halfcheetah" / "1" / "model.onnx"


def fresh_home(home: Path) -> dict[str, str | None]:
    """The variables that decide where ONNX Runtime keeps its cache, all inside ``home``, with the opt-out and the CI
    markers removed: a user's machine."""
    return {"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), "ORT_DISABLE_TELEMETRY": None,
            **dict.fromkeys(CI_MARKERS)}  # fmt: skip


def run_python(code: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = child_env(fresh_home(home))
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_a_bare_onnx_runtime_session_writes_its_telemetry_cache(tmp_path: Path) -> None:
    """The control: without the opt-out, ONNX Runtime itself creates the directory the other checks look for."""
    code = (
        "import onnxruntime as ort\n"
        f"ort.InferenceSession({str(BUNDLED_POLICY)!r}, providers=['CPUExecutionProvider'])\n"
    )
    out = run_python(code, tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / TELEMETRY).is_dir()


ENTRY_POINTS = {
    "service": "import service.server",
    "trainer": "import trainer.export, trainer.evaluate",
    "testing": "import odetoode.testing.models, odetoode.testing.bench",
    **{
        # its imports, as `python benchmarks/<name>.py` runs them, without running its main
        f"benchmarks/{path.name}": f"import runpy; runpy.run_path({str(path)!r}, run_name='imported')"
        for path in sorted((ROOT / "benchmarks").glob("*.py"))
    },
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_importing_an_entry_point_leaves_no_telemetry(tmp_path: Path, entry: str) -> None:
    """Once an entry point is imported, its process may use ONNX Runtime at any later point: it must be off."""
    code = ENTRY_POINTS[entry] + "\nimport onnxruntime\nprint(onnxruntime.__version__)\n"
    out = run_python(code, tmp_path)
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / ".cache").exists(), sorted(p.name for p in (tmp_path / ".cache").rglob("*"))


def test_a_server_run_leaves_no_telemetry(tmp_path: Path) -> None:
    home, repository = tmp_path / "home", tmp_path / "models"
    home.mkdir()
    add_policy(repository, "policy")
    with server_process(repository, env=fresh_home(home)) as proc:
        r = httpx.post(proc.http + "/v2/models/policy/infer", json=observation_json(), timeout=30)
        assert r.status_code == 200
        assert proc.terminate() == 0
    assert not (home / ".cache").exists()
