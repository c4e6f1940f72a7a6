"""The bundled model repository: every file loads, describes itself, and keeps its promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from odetoode.modelfile import ModelDescription

ROOT = Path(__file__).resolve().parents[1]
MODELS = sorted(p for p in (ROOT / "models").glob("*/*/model.onnx"))
THRESHOLDS = {
    "swimmer": ("Swimmer-v5", 300.0),
    "halfcheetah": ("HalfCheetah-v5", 4000.0),
    "cartpole": ("CartPole-v1", 500.0),
}


def description(path: Path) -> ModelDescription:
    return ModelDescription.from_metadata_props({p.key: p.value for p in onnx.load(str(path)).metadata_props})


def test_the_repository_holds_the_promised_models() -> None:
    names = {p.parent.parent.name for p in MODELS}
    assert {"swimmer", "halfcheetah"} <= names
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
    card = (path.parent / "README.md").read_text()
    assert f"mean return **{result['mean']:.1f}**" in card  # the card states exactly what this measures


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
