"""Supervised classifiers on digits-C: training, orthogonality of W_0, the table machinery, export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from odetoode.modelfile import ModelDescription
from trainer.checkpoint import Checkpoint
from trainer.data.digits import digits_c
from trainer.models import GatedWeightFlow
from trainer.publish import export_checkpoint
from trainer.supervised import (
    ACTIVATION,
    TABLE_1,
    TABLE_2,
    TABLE_GATES,
    ClassifierSpec,
    SupervisedConfig,
    accuracy,
    build_classifier,
    decode_predictions,
    encode_predictions,
    train,
)


def test_every_table_column_parses() -> None:
    labels = [ClassifierSpec.parse(m).label for m in (*TABLE_1, *TABLE_2)]
    assert labels[:9] == ["Dense-1", "Dense-10", "NODE", "NANODE-1", "NANODE-10", "HyperNet-1", "HyperNet-10",
                          "ODEtoODE-1", "ODEtoODE-10"]  # fmt: skip
    with pytest.raises(ValueError, match="unknown model family"):
        ClassifierSpec.parse("resnet-3")
    with pytest.raises(ValueError, match=r"dense-k has no variant 'wide'; known: \['relu'\]"):
        ClassifierSpec.parse("dense-1-wide")
    with pytest.raises(ValueError, match="node \\(NODE\\) takes no k"):
        ClassifierSpec.parse("node-1")


def test_every_column_shares_the_flows_activation_unless_a_variant_says_otherwise() -> None:
    for label in (*TABLE_1, *TABLE_2):
        assert ClassifierSpec.parse(label).options["activation"] == ACTIVATION == "abs"
    relu = ClassifierSpec.parse("dense-10-relu")
    assert (relu.label, relu.arch, relu.options) == ("Dense-10 (ReLU)", "dense", {"depth": 10, "activation": "relu"})
    built = {m: build_classifier(SupervisedConfig(model=m, width=8)).model for m in ("dense-2", "dense-2-relu")}
    assert (built["dense-2"].activation, built["dense-2-relu"].activation) == ("abs", "relu")


def gate_and_total_parameters(label: str, width: int) -> tuple[int, int]:
    model = build_classifier(SupervisedConfig(model=label, width=width)).model
    assert isinstance(model, GatedWeightFlow)
    return model.gate_parameter_count(), model.num_parameters()


@pytest.mark.parametrize(("k", "width"), [(1, 128), (10, 128), (2, 256)])
def test_hypernet_k_and_odetoode_k_have_gate_networks_of_equal_size(k: int, width: int) -> None:
    """HyperNet-k and gated-ODEtoODE-k share TABLE_GATES, so their gate parts -- and their whole models -- are of
    equal size; the -wide variant restores the width-16 gates HyperNet-k had before (Table 1: HyperNet-1 397,115
    parameters against ODEtoODE-1's 265,827)."""
    hyper, gated = gate_and_total_parameters(f"hypernet-{k}", width), gate_and_total_parameters(f"odetoode-{k}", width)
    assert hyper == gated
    assert hyper[0] == TABLE_GATES.parameter_count(k, width) == k * (1 + 3 * 8 + 8 * 8 + width * width * 9)
    wide = gate_and_total_parameters(f"hypernet-{k}-wide", width)
    assert wide[0] == k * (1 + 3 * 16 + 16 * 16 + width * width * 17)
    assert wide[1] - hyper[1] == wide[0] - hyper[0]  # nothing but the gates differs
    assert ClassifierSpec.parse(f"hypernet-{k}").options == {**ClassifierSpec.parse(f"odetoode-{k}").options}
    if (k, width) == (1, 128):
        assert (gated[1], wide[1]) == (265_827, 397_115)  # the audit's figures, from the closed form above


def test_a_dense_classifier_learns_digits(tmp_path: Path) -> None:
    _, result = train(SupervisedConfig(model="dense-1", epochs=8), progress=False, out=tmp_path)
    assert result.accuracies["identity"] > 0.9  # chance is 0.1
    assert set(result.accuracies) >= {"stripe", "translate", "shot_noise"}
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["accuracies"] == result.accuracies
    assert saved["model_options"] == {"depth": 1, "activation": "abs"}
    # every test image's predicted class, from which the accuracy follows
    labels = digits_c("identity", split="test")[1]
    for name, accuracy_value in result.accuracies.items():
        predicted = decode_predictions(saved["predictions"][name])
        assert predicted.shape == labels.shape and float((predicted == labels).mean()) == accuracy_value


def test_predictions_round_trip_as_one_digit_per_image() -> None:
    classes = np.array([3, 1, 7, 0, 9, 9])
    assert encode_predictions(classes) == "317099"
    assert np.array_equal(decode_predictions("317099"), classes)
    with pytest.raises(ValueError, match=r"must lie in \[0, 10\)"):
        encode_predictions(np.array([10]))


def test_odetoode_w0_stays_orthogonal_while_training_and_exports_with_parity(tmp_path: Path) -> None:
    config = SupervisedConfig(model="odetoode-2", width=16, step=0.2, epochs=2)
    classifier, result = train(config, progress=False, out=tmp_path / "run")
    w0 = classifier.model.w0.detach().double()
    assert float((w0.T @ w0 - torch.eye(16, dtype=torch.float64)).abs().max()) < 1e-5
    # the checkpoint stores W_0's value (the parametrization folded in): a plain model computing the same function
    plain = Checkpoint.load(tmp_path / "run" / "checkpoint.pt").model()
    assert not hasattr(plain, "parametrizations")
    images, labels = digits_c("identity", split="test")
    with torch.no_grad():
        assert torch.allclose(plain(torch.from_numpy(images[:4]).reshape(4, -1)),
                              classifier.eval()(torch.from_numpy(images[:4])), atol=1e-5)  # fmt: skip
    target = export_checkpoint(tmp_path / "run", "digits", tmp_path / "models").path
    session = ort.InferenceSession(str(target / "model.onnx"), providers=["CPUExecutionProvider"])
    probs = session.run(["probabilities"], {"image": images[:, None]})[0]
    assert float((probs.argmax(1) == labels).mean()) == pytest.approx(accuracy(classifier, images, labels), abs=1e-9)
    card = (target / "README.md").read_text()
    assert "| stripe |" in card and "Test accuracy on digits-C" in card
    proto = onnx.load(str(target / "model.onnx"))
    d = ModelDescription.from_metadata_props({p.key: p.value for p in proto.metadata_props})
    assert (d.training.env, d.training.seed, d.training.iterations) == ("digits", 0, 2)
    assert (d.training.command or "").startswith("python -m trainer supervised --model odetoode-2 --width 16")
    assert d.training.metrics["test_accuracy_identity"] == round(result.accuracies["identity"], 4)
    assert d.training.metrics["stiefel_orthogonality_error_max"] < 1e-5  # W_0 of the linear-projection classifier
    assert d.golden.inputs[0] == tuple(float(v) for v in images[0].astype("float32").ravel())  # real test digits


def test_dropout_is_active_only_in_training() -> None:
    classifier = build_classifier(SupervisedConfig(model="dense-1", width=32, dropout=0.5))
    x = torch.rand(8, 1, 28, 28)
    classifier.train()
    assert not torch.equal(classifier(x), classifier(x))
    classifier.eval()
    assert torch.equal(classifier(x), classifier(x))


def test_one_epoch_smoke_run_of_the_real_cli(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "trainer", "supervised", "--model", "nanode-1", "--width", "16", "--epochs", "1",
         "--out", str(tmp_path / "run"), "--export", "smoke", "--repository", str(tmp_path / "models")],
        capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "identity" in out.stdout and "stripe" in out.stdout
    assert json.loads((tmp_path / "run" / "result.json").read_text())["epochs"] == 1
    assert (tmp_path / "models" / "smoke" / "1" / "model.onnx").is_file()
