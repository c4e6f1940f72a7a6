"""Latency of one exported ISO-ODEtoODE policy (h = 16, N = 25, HalfCheetah-sized 17 -> 6) at batch 1 and 256.

Compares ONNX Runtime (sessions as the server builds them, ``odetoode.testing.bench.cpu_session``: one intra-op
thread) with the same unrolled program evaluated by torch eager and by numpy. The floor, measured in the same run, is
ONNX Runtime running a single-MatMul graph with the same input and output: the fixed cost of one session call. Every
figure is printed with its ratio to the floor and to ONNX Runtime, because absolute numbers on a shared machine are
noisy.

    python benchmarks/policy_latency.py [--repeats 3000]
"""

from __future__ import annotations

import argparse
from functools import partial

import odetoode.telemetry_off  # noqa: F401  (first: turns ONNX Runtime's telemetry off before onnxruntime is imported)

# isort: split
import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

from odetoode.modelfile import Box, Normalization
from odetoode.testing.bench import cpu_session, print_table, time_calls
from trainer.export import PolicySpec, export_policy, policy_reference
from trainer.models import build_model

OBS, ACT, HIDDEN, STEPS = 17, 6, 16, 25


def floor_model() -> bytes:
    w = helper.make_tensor("w", TensorProto.FLOAT, [OBS, ACT], np.zeros(OBS * ACT, dtype=np.float32))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["observation", "w"], ["action"])],
        "floor",
        [helper.make_tensor_value_info("observation", TensorProto.FLOAT, ["batch", OBS])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", ACT])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3000)
    args = parser.parse_args()
    torch.set_num_threads(1)

    model = build_model(
        "iso-odetoode", OBS, ACT, hidden=HIDDEN, steps=STEPS, generator=torch.Generator().manual_seed(0)
    )
    spec = PolicySpec(
        observation_space=Box((OBS,), (-np.inf,) * OBS, (np.inf,) * OBS),
        action_space=Box((ACT,), (-1.0,) * ACT, (1.0,) * ACT),
        normalization=Normalization((0.0,) * OBS, (1.0,) * OBS, 5.0),
    )
    exported = export_policy(model, spec)
    policy = cpu_session(exported.proto.SerializeToString())
    floor = cpu_session(floor_model())

    program32 = model.unroll().map(lambda t: t.to(torch.float32))
    program_np = model.unroll().numpy(np.float32)
    lo, hi = np.float32(-1.0), np.float32(1.0)

    def numpy_policy(obs: np.ndarray) -> np.ndarray:
        return np.clip(program_np(np.clip(obs, -5, 5)), lo, hi)  # type: ignore[no-any-return]

    def torch_policy(obs: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return program32(obs.clamp(-5, 5)).clamp(-1, 1)  # type: ignore[no-any-return]

    print(
        f"ISO-ODEtoODE policy {OBS} -> {HIDDEN} x {STEPS} steps -> {ACT}; onnxruntime {ort.__version__}, "
        f"torch {torch.__version__}, numpy {np.__version__}; one thread each"
    )
    rng = np.random.default_rng(0)
    for batch in (1, 256):
        obs = rng.normal(size=(batch, OBS)).astype(np.float32)
        obs_t = torch.from_numpy(obs)
        # all three compute the same function
        ref = policy_reference(model.unroll(), spec, obs.astype(np.float64))
        for out in (policy.run(None, {"observation": obs})[0], numpy_policy(obs), torch_policy(obs_t).numpy()):
            assert np.allclose(out, ref, atol=1e-5)
        repeats = args.repeats if batch == 1 else max(args.repeats // 3, 100)
        feed = {"observation": obs}
        f = time_calls("floor (ORT 1-MatMul graph)", partial(floor.run, None, feed), repeats=repeats)
        o = time_calls("onnxruntime", partial(policy.run, None, feed), repeats=repeats)
        t = time_calls("torch eager (unrolled)", partial(torch_policy, obs_t), repeats=repeats)
        n = time_calls("numpy (unrolled)", partial(numpy_policy, obs), repeats=repeats)
        print_table(f"batch {batch}", [f, o, t, n], floor=f, reference=o)


if __name__ == "__main__":
    main()
