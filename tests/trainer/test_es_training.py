"""ES training end to end: a classic-control task solved in seconds, and the real CLI on MuJoCo, DM Control, Ray."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import onnx
import pytest

from odetoode.modelfile import ModelDescription
from trainer.checkpoint import Checkpoint
from trainer.cli import parse
from trainer.commands.training import ESCommand
from trainer.es_training import ESConfig, ESRun
from trainer.manifolds import NotOnManifoldError, orthogonality_error
from trainer.rollouts import InlineBackend

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([sys.executable, "-m", "trainer", *args], capture_output=True, text=True, cwd=ROOT,
                         timeout=timeout)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_mountain_car_is_solved_to_its_reward_threshold_within_a_minute(tmp_path: Path) -> None:
    env = "MountainCarContinuous-v0"
    threshold = gym.spec(env).reward_threshold
    assert threshold == 90.0
    config = ESConfig(env=env, directions=20, sigma=0.5, step_size=0.1, shaping="top-b", top_b=10, iterations=15,
                      backend="inline", seed=0)  # fmt: skip
    started = time.perf_counter()
    run = ESRun(config, tmp_path / "run")
    state = run.train(InlineBackend(), progress=False)
    assert time.perf_counter() - started < 60
    assert state.best_reward >= threshold
    best = Checkpoint.load(tmp_path / "run" / "best.pt")
    assert best.training.metrics["eval_return"] >= threshold
    assert (best.training.env, best.training.seed) == (env, 0) and best.training.iterations is not None
    for name in ("omega1", "omega2", "w0"):  # the Riemannian updates kept them on their manifolds
        assert float(orthogonality_error(best.state_dict[name]).max()) < 1e-10


def test_cli_on_mujoco_trains_resumes_exports_and_plots(tmp_path: Path) -> None:
    run = tmp_path / "cheetah"
    common = ["--env", "HalfCheetah-v5", "--directions", "3", "--max-episode-steps", "30", "--eval-episodes", "2",
              "--workers", "2", "--out", str(run)]  # fmt: skip
    out = cli("es", *common, "--iterations", "2")
    assert "best evaluation return" in out.stdout
    assert "it/s" in out.stderr or "steps_s=" in out.stderr  # the progress bar
    cli("es", *common, "--iterations", "3", "--resume", "--export", "cheetah", "--repository",
        str(tmp_path / "models"), "--export-episodes", "2")  # fmt: skip
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 2, 3]
    assert {"env_steps", "reward_mean", "eval_return", "steps_per_s", "best_eval_return"} <= records[-1].keys()
    version = tmp_path / "models" / "cheetah" / "1"
    proto = onnx.load(str(version / "model.onnx"))
    d = ModelDescription.from_metadata_props({p.key: p.value for p in proto.metadata_props})
    assert d.env_id == "HalfCheetah-v5" and d.obs_normalization is not None
    # the export carries the normalization the best policy was evaluated with; the run's statistics moved on
    assert d.obs_normalization == Checkpoint.load(run / "best.pt").normalization
    latest = Checkpoint.load(run / "checkpoint.pt").normalization
    assert latest is not None and latest.std != (1.0,) * 17
    assert "onnx_eval_return_2_episodes" in d.training["metrics"]
    assert d.training.metrics["stiefel_orthogonality_error_max"] < 1e-10
    # provenance: the commands as typed (a resumed run's after the first), the run's counters
    assert (d.training.command or "").startswith("python -m trainer es --env HalfCheetah-v5")
    assert d.training.env == "HalfCheetah-v5" and d.training.seed == 0 and (d.training.env_steps or 0) > 0
    first, second = (Checkpoint.load(run / "checkpoint.pt").training.command or "").split(" && ")
    assert "--iterations 2" in first and "--resume" not in first
    assert second.startswith("python -m trainer es") and "--resume" in second and "--iterations 3" in second
    assert (version / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Evaluation" in (version / "README.md").read_text()
    cli("plot", str(run), "--out", str(tmp_path / "curve.png"))
    assert (tmp_path / "curve.png").stat().st_size > 1000


def test_cli_on_dm_control(tmp_path: Path) -> None:
    cli("es", "--env", "dmc:swimmer/swimmer15", "--directions", "2", "--max-episode-steps", "20",
        "--eval-episodes", "1", "--iterations", "1", "--backend", "inline", "--out", str(tmp_path / "dmc"))  # fmt: skip
    record = json.loads((tmp_path / "dmc" / "log.jsonl").read_text())
    assert record["env_steps"] == 5 * 20 and np.isfinite(record["eval_return"])


def test_cli_through_a_local_ray_instance(tmp_path: Path) -> None:
    cli("es", "--env", "Pendulum-v1", "--directions", "4", "--max-episode-steps", "20", "--eval-episodes", "1",
        "--iterations", "2", "--backend", "ray", "--workers", "2", "--out", str(tmp_path / "ray"))  # fmt: skip
    records = (tmp_path / "ray" / "log.jsonl").read_text().splitlines()
    assert len(records) == 2 and json.loads(records[-1])["env_steps"] == 2 * 9 * 20


@pytest.mark.parametrize("arch", ["deepnet", "nanode", "hypernet", "baseode", "deepresnet"])
def test_baselines_train_with_the_same_loop(tmp_path: Path, arch: str) -> None:
    config = ESConfig(env="Pendulum-v1", arch=arch, directions=2, iterations=1, max_episode_steps=10,
                      eval_episodes=1, backend="inline")  # fmt: skip
    state = ESRun(config, tmp_path).train(InlineBackend(), progress=False)
    assert state.iteration == 1 and np.isfinite(state.best_reward)


def test_training_refuses_to_end_with_a_parameter_off_its_manifold(tmp_path: Path) -> None:
    run = ESRun(ESConfig(env="Pendulum-v1", iterations=0, backend="inline"), tmp_path)
    run.check_manifolds()  # a fresh run is on its manifolds
    run.params["w0"] = 1.5 * run.params["w0"]  # W^T W = 2.25 I: orthogonality error 1.25
    with pytest.raises(
        NotOnManifoldError, match=r"left their manifolds after iteration 0: w0 \(orthogonality error 1.25\)"
    ):
        run.train(InlineBackend(), progress=False)


def test_a_run_started_from_code_records_a_command_that_reproduces_it(tmp_path: Path) -> None:
    config = ESConfig(env="Pendulum-v1", arch="deepnet", model_options={"depth": 3}, top_b=4, normalize=False,
                      time_budget_s=9.5)  # fmt: skip
    run = ESRun(config, tmp_path / "a run")
    words = shlex.split(run.command)
    assert words[:4] == ["python", "-m", "trainer", "es"]
    command = parse(words[3:])
    assert isinstance(command, ESCommand)
    assert command.config == config and command.out == tmp_path / "a run"
    assert ESRun(config, tmp_path, command="typed").command == "typed"
