"""gRPC transport with our own stubs: contents forms, streaming order, health per model, reflection, model config."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from odetoode.proto.inference import grpc_service_pb2 as pb
from odetoode.testing.clients import action_of, infer_proto, stub
from odetoode.testing.servers import RunningServer


def expected_action(server: RunningServer, version: str, x: np.ndarray) -> np.ndarray:
    path = server.server.settings.repository / "policy" / version / "model.onnx"
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"observation": x})[0]  # type: ignore[no-any-return]


def test_typed_and_raw_contents_give_the_same_answer(server: RunningServer) -> None:
    x = np.random.default_rng(0).normal(size=(3, 17)).astype(np.float32)
    typed = pb.ModelInferRequest(model_name="policy", model_version="1")
    t = typed.inputs.add(name="observation", datatype="FP32", shape=[3, 17])
    t.contents.fp32_contents.extend(x.ravel().tolist())
    raw = pb.ModelInferRequest(model_name="policy", model_version="1")
    raw.inputs.add(name="observation", datatype="FP32", shape=[3, 17])
    raw.raw_input_contents.append(x.tobytes())
    channel, s = stub(server.grpc)
    with channel:
        a, b = action_of(s.ModelInfer(typed)), action_of(s.ModelInfer(raw))
        both = pb.ModelInferRequest()
        both.CopyFrom(raw)
        both.inputs[0].contents.fp32_contents.extend([0.0] * 51)
        with pytest.raises(Exception, match="raw_input_contents or contents, not both"):
            s.ModelInfer(both)
    assert np.array_equal(a, b)
    assert np.allclose(a, expected_action(server, "1", x), atol=1e-6)


def test_stream_answers_in_order_and_survives_a_bad_request(server: RunningServer) -> None:
    requests = (
        [infer_proto("policy", value=v) for v in (0.1, 0.2)]
        + [infer_proto("nosuch")]
        + [infer_proto("policy", value=v) for v in (0.3, 0.4)]
    )
    for i, r in enumerate(requests):
        r.id = f"req-{i}"
    channel, s = stub(server.grpc)
    with channel:
        responses = list(s.ModelStreamInfer(iter(requests)))
    assert len(responses) == 5
    assert "unknown model 'nosuch'" in responses[2].error_message
    answered = [r.infer_response for r in responses if not r.error_message]
    assert [r.id for r in answered] == ["req-0", "req-1", "req-3", "req-4"]
    for r, v in zip(answered, (0.1, 0.2, 0.3, 0.4), strict=True):
        assert np.allclose(action_of(r), expected_action(server, "2", np.full((1, 17), v, np.float32)), atol=1e-6)


def test_health_for_the_server_and_each_model(server: RunningServer) -> None:
    channel, _ = stub(server.grpc)
    with channel:
        health = health_pb2_grpc.HealthStub(channel)
        serving = health_pb2.HealthCheckResponse.SERVING
        for service in ("", "liveness", "inference.GRPCInferenceService", "odetoode.v1.PolicyService", "policy",
                        "digits"):  # fmt: skip
            assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == serving
        with pytest.raises(Exception, match="NOT_FOUND"):
            health.Check(health_pb2.HealthCheckRequest(service="nosuch"))


def test_reflection_lists_every_service(server: RunningServer) -> None:
    channel, _ = stub(server.grpc)
    with channel:
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (response,) = list(reflect.ServerReflectionInfo(iter([request])))
        names = {s.name for s in response.list_services_response.service}
        assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.ModelInferRequest")
        (response,) = list(reflect.ServerReflectionInfo(iter([request])))
        assert response.file_descriptor_response.file_descriptor_proto


def test_metadata_config_and_readiness(server: RunningServer) -> None:
    channel, s = stub(server.grpc)
    with channel:
        assert s.ServerLive(pb.ServerLiveRequest()).live
        assert s.ServerReady(pb.ServerReadyRequest()).ready
        meta = s.ServerMetadata(pb.ServerMetadataRequest())
        assert meta.name == "odetoode" and "model_repository" in meta.extensions
        m = s.ModelMetadata(pb.ModelMetadataRequest(name="policy"))
        assert list(m.versions) == ["1", "2"] and m.platform == "onnxruntime_onnx"
        assert (m.inputs[0].name, m.inputs[0].datatype, list(m.inputs[0].shape)) == ("observation", "FP32", [-1, 17])
        assert s.ModelReady(pb.ModelReadyRequest(name="digits", version="1")).ready
        assert not s.ModelReady(pb.ModelReadyRequest(name="policy", version="7")).ready  # as Triton: no error
        assert not s.ModelReady(pb.ModelReadyRequest(name="nosuch")).ready
        config = s.ModelConfig(pb.ModelConfigRequest(name="policy")).config
        assert config.name == "policy" and config.max_batch_size == 256 and list(config.input[0].dims) == [17]
        assert float(config.parameters["odetoode.lipschitz_bound"].string_value) == pytest.approx(1.04**25, rel=1e-5)
        index = s.RepositoryIndex(pb.RepositoryIndexRequest())
        assert {(m.name, m.version, m.state) for m in index.models} == {
            ("digits", "1", "READY"),
            ("policy", "1", "READY"),
            ("policy", "2", "READY"),
        }


def test_classifier_outputs_are_consistent(server: RunningServer) -> None:
    images = np.random.default_rng(1).uniform(size=(2, 1, 28, 28)).astype(np.float32)
    request = pb.ModelInferRequest(model_name="digits")
    request.inputs.add(name="image", datatype="FP32", shape=[2, 1, 28, 28])
    request.raw_input_contents.append(images.tobytes())
    request.outputs.add(name="probabilities")
    channel, s = stub(server.grpc)
    with channel:
        response = s.ModelInfer(request)
    assert [o.name for o in response.outputs] == ["probabilities"]
    probs = np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(2, 10)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-6)
