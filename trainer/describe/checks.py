"""Running and checking the described graph with ONNX Runtime before it is written: on in-space observations one at a
time and as a batch, then loaded as the server loads it (metadata parsed, golden pairs reproduced)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from odetoode.modelfile import POLICY_INPUT, Box, Discrete, ModelDescription, ModelFormatError, Normalization, Space
from trainer.describe.errors import DescribeError, first_line

CHECK_BATCH = 64
"""In-space observations the described graph is run on, one at a time and as one batch."""
_UNBOUNDED = 1e30  # a bound this large is sampled as unbounded (some environments write float32 max for "none")


def sample_observations(space: Box, normalization: Normalization | None, n: int, rng: np.random.Generator
                        ) -> np.ndarray:  # fmt: skip
    """``n`` float32 observations in ``space``: uniform where both bounds are finite, else drawn around the
    normalization's mean with its std (a standard normal without one) and kept within the bound that is finite."""
    low, high = np.asarray(space.low, np.float64), np.asarray(space.high, np.float64)
    bounded = (np.abs(low) < _UNBOUNDED) & (np.abs(high) < _UNBOUNDED)
    mean = np.zeros(space.size) if normalization is None else np.asarray(normalization.mean, np.float64)
    std = np.ones(space.size) if normalization is None else np.asarray(normalization.std, np.float64)
    drawn = np.where(bounded, rng.uniform(np.where(bounded, low, 0.0), np.where(bounded, high, 1.0), (n, space.size)),
                     mean + std * rng.standard_normal((n, space.size)))  # fmt: skip
    return np.clip(drawn, low, high).astype(np.float32)


def _session(proto: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 4  # a failing run is reported as a DescribeError, not also logged by ORT
    try:
        return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises several unrelated exception types for a graph it rejects
        raise DescribeError(f"ONNX Runtime cannot load the described graph: {first_line(exc)}") from None


def check_runs(proto: onnx.ModelProto, observations: np.ndarray, action: Space) -> list[np.ndarray]:
    """Runs ``observations`` as one batch and one at a time; returns the batch's outputs after checking shapes,
    finiteness and that each row is what that observation alone gives."""
    session = _session(proto)
    try:
        batch = session.run(None, {POLICY_INPUT: observations})
        rows = [session.run(None, {POLICY_INPUT: observations[i : i + 1]}) for i in range(len(observations))]
    except Exception as exc:
        raise DescribeError(f"ONNX Runtime cannot run the described graph on a batch of {len(observations)} "
                            f"observations (exported with a fixed batch size? export with a dynamic batch axis): "
                            f"{first_line(exc)}") from None  # fmt: skip
    n = len(observations)
    expected = [(n, action.size)] if isinstance(action, Box) else [(n,), (n, action.n)]
    if [o.shape for o in batch] != expected:
        raise DescribeError(f"the graph answers shapes {[list(o.shape) for o in batch]} for {n} observations; "
                            f"the action space needs {[list(e) for e in expected]}")  # fmt: skip
    if not all(np.isfinite(o).all() for o in batch):
        raise DescribeError("the graph answers non-finite values on in-space observations")
    if isinstance(action, Discrete) and not ((batch[0] >= 0) & (batch[0] < action.n)).all():
        raise DescribeError(f"the graph's action indices leave 0..{action.n - 1}")
    compared = batch[-1]  # the Box action, or the logits
    alone = np.concatenate([r[-1] for r in rows])
    scale = max(1.0, float(np.max(np.abs(compared))))
    if not np.allclose(alone, compared, rtol=1e-4, atol=1e-5 * scale):
        raise DescribeError("a batch's rows differ from the same observations run one at a time: the graph mixes "
                            "the rows of a batch (a normalization over the batch, or a fixed batch size)")  # fmt: skip
    return batch


def golden_rows(outputs: list[np.ndarray], count: int, *, discrete: bool) -> list[int]:
    """The rows that become golden pairs: the first ones, except that a Discrete policy takes first the rows whose
    two best logits are clearly apart (a near-tie could flip on another execution provider and fail the load)."""
    rows = list(range(len(outputs[0])))
    if discrete and outputs[1].shape[1] > 1:
        top2 = np.sort(outputs[1], axis=1)[:, -2:]
        margin = (top2[:, 1] - top2[:, 0]) / np.maximum(1.0, np.abs(top2[:, 1]))
        rows.sort(key=lambda i: bool(margin[i] <= 1e-3))  # stable: clear rows first, each group in drawing order
    return rows[:count]


def check_as_served(proto: onnx.ModelProto) -> None:
    """Loads the file as the server does: metadata parsed from ONNX Runtime, the policy's names, the golden pairs."""
    session = _session(proto)
    try:
        d = ModelDescription.from_metadata_props(dict(session.get_modelmeta().custom_metadata_map))
    except ModelFormatError as exc:
        raise DescribeError(f"the written metadata does not parse: {exc}") from None
    names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    assert names == ([POLICY_INPUT], list(d.output_names)), names
    x = np.asarray(d.golden.inputs, np.float32)
    actual = session.run([d.output_names[0]], {POLICY_INPUT: x})[0].reshape(len(x), -1).astype(np.float64)
    if not np.allclose(actual, np.asarray(d.golden.outputs), rtol=d.golden.rtol, atol=d.golden.atol):
        raise DescribeError("the golden pairs are not reproduced by the written file")
