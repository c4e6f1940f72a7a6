"""The bundled model repository: every file loads, describes itself, and keeps its promises."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from odetoode.modelfile import ModelDescription

ROOT = Path(__file__).resolve().parents[1]
MODELS = sorted(p for p in (ROOT / "models").glob("*/*/model.onnx"))
THRESHOLDS = {
    "swimmer": ("Swimmer-v5", 340.0),
    "hopper": ("Hopper-v5", 3000.0),
    "halfcheetah": ("HalfCheetah-v5", 4000.0),
    "cartpole": ("CartPole-v1", 500.0),
}


def description(path: Path) -> ModelDescription:
    return ModelDescription.from_metadata_props({p.key: p.value for p in onnx.load(str(path)).metadata_props})


def test_the_repository_holds_the_promised_models() -> None:
    names = {p.parent.parent.name for p in MODELS}
    assert {"swimmer", "halfcheetah", "hopper", "cartpole", "digits"} <= names
    for path in MODELS:
        assert (path.parent / "README.md").is_file(), path
        assert path.stat().st_size < 2 * 1024 * 1024  # small files only


@pytest.mark.parametrize("path", MODELS, ids=lambda p: f"{p.parent.parent.name}-v{p.parent.name}")
def test_bundled_model_is_valid_and_reproduces_its_golden_pairs(path: Path) -> None:
    import onnxruntime as ort

    d = description(path)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.asarray(d.golden.inputs, dtype=np.float32).reshape(len(d.golden.inputs), *session.get_inputs()[0].shape[1:])
    out = session.run(None, {d.input_name: x})[0]
    assert np.allclose(out, np.asarray(d.golden.outputs).reshape(out.shape), rtol=d.golden.rtol, atol=d.golden.atol)
    assert d.training.get("command", "").startswith("python -m trainer")


@pytest.mark.parametrize("name", sorted(THRESHOLDS))
def test_bundled_policy_keeps_its_manifolds_and_certificate(name: str) -> None:
    """Omega_1, Omega_2 are Stiefel and every unrolled W_i orthogonal in the float32 file; the bound is (1+1/N)^N."""
    (path,) = [p for p in MODELS if p.parent.parent.name == name][-1:]
    d = description(path)
    assert d.arch == "iso-odetoode" and d.lipschitz_bound == pytest.approx((1 + 1 / d.steps) ** d.steps, rel=1e-5)
    weights = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in onnx.load(str(path)).graph.initializer}
    matmuls = [n.input[1] for n in onnx.load(str(path)).graph.node if n.op_type == "MatMul"]
    omega1_t, omega2_t = weights[matmuls[0]], weights[matmuls[-1]]  # stored transposed: [in, out]
    omega1, omega2 = omega1_t.T, omega2_t.T
    gram1 = omega1.T @ omega1 if omega1.shape[0] >= omega1.shape[1] else omega1 @ omega1.T
    gram2 = omega2.T @ omega2 if omega2.shape[0] >= omega2.shape[1] else omega2 @ omega2.T
    assert np.abs(gram1 - np.eye(len(gram1))).max() < 1e-5 and np.abs(gram2 - np.eye(len(gram2))).max() < 1e-5
    flow = [weights[m] * d.steps for m in matmuls[1:-1]]  # Euler steps store (1/N) W_i^T
    assert len(flow) == d.steps
    assert max(np.abs(w.T @ w - np.eye(d.hidden)).max() for w in flow) < 1e-5


@pytest.mark.parametrize("name", sorted(THRESHOLDS))
def test_bundled_policy_reaches_its_return_with_onnx_runtime_alone(name: str) -> None:
    """20 episodes, seeds never used in training, in a process where importing torch fails."""
    env_id, threshold = THRESHOLDS[name]
    (path,) = [p for p in MODELS if p.parent.parent.name == name][-1:]
    code = (
        "import json, sys\n"
        "sys.modules['torch'] = None\n"
        "from trainer.evaluate import evaluate_onnx\n"
        f"r = evaluate_onnx({str(path)!r}, {env_id!r}, 20)\n"
        "print(json.dumps({'mean': r.mean, 'returns': r.returns}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["mean"] >= threshold, result
    # the card's evaluation starts with these seeds: its first 20 returns are exactly what this measures
    assert result["returns"] == json.loads((path.parent / "evaluation.json").read_text())["returns"][:20]


CARD_EPISODES = 50
"""Episodes of the evaluation in every bundled policy's card (issue 17: 50 fixed seeds)."""


def card_evaluation(card: str) -> dict[str, Any]:
    """The numbers the card's Evaluation section shows, read back from its text (not from the code that wrote it)."""
    section = card[card.index("\n## Evaluation\n") :]
    section = section[: section.find("\n## ", 1)] if "\n## " in section[1:] else section
    summary = re.search(r"mean return \*\*(\S+)\*\*, sample std (\S+), min (\S+), 5th percentile (\S+), "
                        r"max ([^;\s]+); (.+?)\.\n", section)  # fmt: skip
    episodes = re.search(r"for (\d+) episodes? of `([^`]+)`", section)
    seeds = re.search(r"seeds (\d+)\.\.(\d+)", section)
    sha = re.search(r"sha256 `([0-9a-f]{64})`", section)
    assert summary and episodes and seeds and sha, section
    rows = section.split("```text\n", 1)[1].split("\n```", 1)[0].splitlines()
    returns: list[str] = []
    for row in rows:
        offset, *values = row.split()
        assert int(offset) == len(returns), row  # row +k starts at the k-th return
        returns += values
    return {
        "env_id": episodes[2],
        "episodes": int(episodes[1]),
        "seeds": (int(seeds[1]), int(seeds[2])),
        "sha256": sha[1],
        "summary": dict(zip(("mean", "std", "min", "p5", "max"), summary.groups()[:5], strict=True)),
        "lengths": summary[6],
        "returns": returns,
        "command": section.split("```sh\n", 1)[1].split("\n```", 1)[0],
        "links": re.findall(r"\]\(([^)]+)\)", section),
    }


@pytest.mark.parametrize("name", sorted(THRESHOLDS))
def test_bundled_policy_card_shows_what_its_evaluation_json_holds(name: str) -> None:
    """Every number of the card's Evaluation section, against evaluation.json beside it; the summary recomputed from
    the returns; the seeds the documented ones; the sha256 the file's; the command one that reproduces them."""
    from trainer.cli import parse
    from trainer.commands.models import EvaluateCommand
    from trainer.evaluate import EVALUATION_SEED_BASE

    env_id, threshold = THRESHOLDS[name]
    (path,) = [p for p in MODELS if p.parent.parent.name == name][-1:]
    shown = card_evaluation((path.parent / "README.md").read_text())
    record = json.loads((path.parent / "evaluation.json").read_text())
    returns = np.asarray(record["returns"])
    assert record["env_id"] == shown["env_id"] == env_id
    assert record["episodes"] == shown["episodes"] == len(returns) == len(record["lengths"]) == CARD_EPISODES
    assert record["seeds"] == list(range(EVALUATION_SEED_BASE, EVALUATION_SEED_BASE + CARD_EPISODES))
    assert shown["seeds"] == (record["seeds"][0], record["seeds"][-1])
    assert record["model_sha256"] == shown["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    recomputed = {"mean": returns.mean(), "std": returns.std(ddof=1), "min": returns.min(),
                  "p5": np.percentile(returns, 5), "max": returns.max()}  # fmt: skip
    assert record["summary"] == pytest.approx(recomputed, rel=1e-12)
    assert recomputed["mean"] >= threshold  # the promise holds on all 50 seeds, not only on the first 20
    assert shown["summary"] == {k: f"{v:.1f}" for k, v in recomputed.items()}
    assert shown["returns"] == [f"{r:.1f}" for r in returns]
    lengths = set(record["lengths"])
    assert shown["lengths"] == (f"every episode ran {lengths.pop()} steps" if len(lengths) == 1 else
                                f"episodes ran {min(lengths)} to {max(lengths)} steps")  # fmt: skip
    assert shown["command"] == record["command"]
    command = parse(shlex.split(record["command"])[3:])
    assert isinstance(command, EvaluateCommand) and command.card and command.episodes == CARD_EPISODES
    assert (ROOT / command.model).resolve() == path.resolve() and command.seed == EVALUATION_SEED_BASE
    assert command.env is None  # the file names its environment
    png = path.parent / "evaluation.png"
    assert {"evaluation.png", "evaluation.json"} <= set(shown["links"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 100 * 1024
    # the evaluation the export recorded in the file covered the first of these seeds: the same returns
    for key, value in description(path).training.metrics.items():
        if match := re.fullmatch(r"onnx_eval_return_(\d+)_episodes", key):
            assert round(float(returns[: int(match[1])].mean()), 2) == value, key


def test_bundled_classifier_accuracy_is_the_same_served_over_rest_and_grpc() -> None:
    """The card's clean test accuracy, recomputed offline and through both predict paths of a live server."""
    import grpc
    import httpx
    import onnxruntime as ort

    from odetoode.proto.inference import grpc_service_pb2 as pb
    from odetoode.proto.inference import grpc_service_pb2_grpc as pb_grpc
    from odetoode.testing.servers import running_server
    from trainer.data.digits import digits_c

    (path,) = [p for p in MODELS if p.parent.parent.name == "digits"][-1:]
    card_accuracy = description(path).training["metrics"]["test_accuracy_identity"]
    images, labels = digits_c("identity", split="test")
    x = images[:, None].astype(np.float32)
    offline = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], {"image": x})[0]
    offline_accuracy = float((offline.argmax(1) == labels).mean())
    assert round(offline_accuracy, 4) == card_accuracy
    with running_server(ROOT / "models", model_control_mode="explicit", startup_models=["digits"]) as server:
        v1 = httpx.post(f"{server.http}/v1/models/digits:predict", json={"instances": x.tolist()}, timeout=60)
        rest_predictions = np.asarray([row["probabilities"] for row in v1.json()["predictions"]]).argmax(1)
        parts = []
        with grpc.insecure_channel(server.grpc) as channel:
            # 200 images (627 KB) per message: the server takes gRPC messages up to 1 MiB (grpc_max_message_bytes)
            for batch in np.array_split(x, -(-len(x) // 200)):
                request = pb.ModelInferRequest(model_name="digits", outputs=[{"name": "logits"}])
                request.inputs.add(name="image", datatype="FP32", shape=list(batch.shape))
                request.raw_input_contents.append(batch.tobytes())
                response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
                parts.append(np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(len(batch), 10))
        grpc_logits = np.concatenate(parts)
    assert float((rest_predictions == labels).mean()) == offline_accuracy
    assert float((grpc_logits.argmax(1) == labels).mean()) == offline_accuracy
