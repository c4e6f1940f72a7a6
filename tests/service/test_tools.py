"""``python -m service info|act``, run as a user runs them against a real server: a JSON document with numbers as
numbers, and one-line failures (the server's message, or no server at all) without a traceback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest

from odetoode.modelfile import ModelDescription
from odetoode.testing.models import OBS
from odetoode.testing.servers import RunningServer
from service.tools import CONNECT_TIMEOUT_S, main

ROOT = Path(__file__).resolve().parents[2]


def service(*args: str) -> subprocess.CompletedProcess[str]:
    """The real entry point, ``python -m service ...``, in a child process."""
    return subprocess.run([sys.executable, "-m", "service", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=60)  # fmt: skip


def strict_json(text: str) -> Any:
    """``text`` parsed as standard JSON: ``NaN`` and ``Infinity`` (which Python would accept) are errors."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"not standard JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def description(server: RunningServer, policy: str, version: str) -> ModelDescription:
    path = server.server.settings.repository / policy / version / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return ModelDescription.from_metadata_props(session.get_modelmeta().custom_metadata_map)


def free_port() -> int:
    """A port nothing listens on (bound and released: nothing else takes it in the moment the test needs)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_info_prints_a_json_document_with_numbers_and_the_training_record_as_an_object(
    server: RunningServer,
) -> None:
    done = service("info", "--policy", "policy", "--target", server.grpc)
    assert done.returncode == 0, done.stderr
    doc = strict_json(done.stdout)
    d = description(server, "policy", "2")
    assert d.observation_space is not None and d.action_space is not None and d.obs_normalization is not None
    assert (doc["policy"], doc["version"], doc["versions"], doc["env_id"], doc["arch"]) == (
        "policy", "2", ["1", "2"], d.env_id, d.arch)  # fmt: skip
    assert (doc["steps"], doc["hidden"]) == (d.steps, d.hidden) and isinstance(doc["steps"], int)
    # spaces as the model-file contract writes them: integer shapes, unbounded limits as "-inf" / "inf"
    assert doc["observation_space"] == d.observation_space.to_json()
    assert doc["observation_space"]["shape"] == [OBS]
    assert doc["action_space"] == d.action_space.to_json()
    norm = doc["normalization"]
    assert all(isinstance(v, float) for v in (*norm["mean"], *norm["std"], norm["clip"]))
    assert norm["mean"] == pytest.approx(d.obs_normalization.mean, rel=1e-6)  # float32 on the wire
    assert norm["clip"] == pytest.approx(d.obs_normalization.clip)
    assert doc["lipschitz_bound"] == pytest.approx(d.lipschitz_bound, rel=1e-9)
    assert doc["training"] == json.loads(json.dumps(dict(d.training))) and doc["training"]["seed"] == 2
    assert doc["control_rate_hz"] is None  # not set: null, not 0
    assert doc["execution_provider"] == "CPUExecutionProvider"


def test_act_prints_the_action(server: RunningServer) -> None:
    done = service("act", "--policy", "policy", "--version", "1", "--target", server.grpc)
    assert done.returncode == 0, done.stderr
    answer = strict_json(done.stdout)
    assert answer["version"] == "1" and len(answer["action"]) == 6
    assert all(-1.0 <= a <= 1.0 for a in answer["action"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("info", "--policy", "nosuch"), "nosuch"),
        (("act", "--policy", "nosuch"), "nosuch"),
        (("act", "--policy", "policy", "--observation", "1, 2"), "observation: 2 values, policy 'policy' expects 17"),
    ],
    ids=["info-unknown-model", "act-unknown-model", "act-bad-observation"],
)
def test_a_refusal_is_the_servers_message_on_one_line(server: RunningServer, args: tuple[str, ...],
                                                      message: str) -> None:  # fmt: skip
    done = service(*args, "--target", server.grpc)
    assert done.returncode == 1
    assert done.stdout == "" and "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"python -m service {args[0]}: ") and message in line


def test_no_server_fails_fast_and_says_where_it_looked(capsys: pytest.CaptureFixture[str]) -> None:
    target = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    status = main(["info", "--policy", "policy", "--target", target])
    elapsed = time.monotonic() - started
    assert status == 1
    assert elapsed < CONNECT_TIMEOUT_S + 1.5
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"python -m service info: no server at {target}")


def test_no_server_from_the_real_entry_point_is_one_line() -> None:
    target = f"127.0.0.1:{free_port()}"
    done = service("act", "--policy", "policy", "--target", target, "--connect-timeout", "0.5")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [f"python -m service act: no server at {target} (nothing accepted a connection "
                                        "within 0.5 s)"]  # fmt: skip


def test_an_observation_that_is_not_numbers_is_a_usage_error() -> None:
    done = service("act", "--policy", "policy", "--observation", "1 two")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "expected numbers separated by commas or spaces, got '1 two'" in done.stderr
