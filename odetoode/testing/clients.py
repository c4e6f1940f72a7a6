"""Small request builders shared by the service tests (our own stubs; tritonclient has its own tests)."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np

from odetoode.proto.inference import grpc_service_pb2 as pb
from odetoode.proto.inference import grpc_service_pb2_grpc as pb_grpc

OBS = 17


def observation_json(batch: int = 1, value: float = 0.1) -> dict[str, Any]:
    return {"inputs": [{"name": "observation", "shape": [batch, OBS], "datatype": "FP32",
                        "data": [value] * (batch * OBS)}]}  # fmt: skip


def infer_proto(model: str, batch: int = 1, *, version: str = "", value: float = 0.1) -> pb.ModelInferRequest:
    x = np.full((batch, OBS), value, dtype=np.float32)
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    request.inputs.add(name="observation", datatype="FP32", shape=[batch, OBS])
    request.raw_input_contents.append(x.tobytes())
    return request


def stub(address: str, **options: Any) -> tuple[grpc.Channel, pb_grpc.GRPCInferenceServiceStub]:
    channel = grpc.insecure_channel(address, options=list(options.items()))
    return channel, pb_grpc.GRPCInferenceServiceStub(channel)


def action_of(response: pb.ModelInferResponse) -> np.ndarray:
    shape = list(response.outputs[0].shape)
    return np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(shape)
