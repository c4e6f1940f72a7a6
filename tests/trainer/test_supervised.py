"""Supervised classifiers on digits-C: training, orthogonality of W_0, the table machinery, export."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch

from odetoode.modelfile import ModelDescription
from trainer.checkpoint import Checkpoint
from trainer.data.digits import digits_c
from trainer.experiments.tables import reproduce
from trainer.publish import export_checkpoint
from trainer.supervised import (
    TABLE_1,
    TABLE_2,
    ClassifierSpec,
    SupervisedConfig,
    accuracy,
    build_classifier,
    train,
)


def test_every_table_column_parses() -> None:
    labels = [ClassifierSpec.parse(m).label for m in (*TABLE_1, *TABLE_2)]
    assert labels[:9] == ["Dense-1", "Dense-10", "NODE", "NANODE-1", "NANODE-10", "HyperNet-1", "HyperNet-10",
                          "ODEtoODE-1", "ODEtoODE-10"]  # fmt: skip
    with pytest.raises(ValueError, match="unknown model family"):
        ClassifierSpec.parse("resnet-3")


def test_a_dense_classifier_learns_digits(tmp_path: Path) -> None:
    _, result = train(SupervisedConfig(model="dense-1", epochs=8), progress=False, out=tmp_path)
    assert result.accuracies["identity"] > 0.9  # chance is 0.1
    assert set(result.accuracies) >= {"stripe", "translate", "shot_noise"}
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["accuracies"] == result.accuracies


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


def test_table_markdown_and_heatmap_from_cached_cells(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for model, acc in (("dense-1", 0.9), ("odetoode-1", 0.95)):
        for seed in (0, 1):
            cell = runs / "table1" / model / f"seed{seed}"
            cell.mkdir(parents=True)
            accuracies = {"identity": acc + 0.01 * seed, "stripe": acc - 0.5}
            cell.joinpath("result.json").write_text(json.dumps({"accuracies": accuracies, "epochs": 3,
                                                                "wall_s": 1.0}))  # fmt: skip
    md = reproduce(1, [0, 1], 3, runs, tmp_path / "docs", models=["dense-1", "odetoode-1"], progress=False)
    text = md.read_text()
    assert "| identity | 90.50 +- 0.50 | **95.50** +- 0.50 |" in text
    assert "3 epochs" in text and "Rows won: ODEtoODE-1 2" in text
    assert (tmp_path / "docs" / "figures" / "table1.png").read_bytes()[:4] == b"\x89PNG"


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
