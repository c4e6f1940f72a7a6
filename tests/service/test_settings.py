"""Settings come from the environment (ODETOODE_*) and from flags; per-model files are validated."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.errors import ModelLoadError
from service.model_config import ServingConfig, VersionPolicy, load_serving_config, resolve
from service.settings import ServerSettings

ROOT = Path(__file__).resolve().parents[2]


def test_environment_variables_with_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ODETOODE_HTTP_PORT", "9000")
    monkeypatch.setenv("ODETOODE_PROVIDERS", '["cuda", "cpu"]')
    monkeypatch.setenv("ODETOODE_REPOSITORY_API", "true")
    s = ServerSettings()
    assert (s.http_port, s.providers, s.repository_api) == (9000, ["cuda", "cpu"], True)


def test_invalid_values_name_the_field() -> None:
    with pytest.raises(ValidationError, match="http_port"):
        ServerSettings(http_port=70000)
    with pytest.raises(ValidationError, match="providers"):
        ServerSettings(providers=["tpu"])  # type: ignore[list-item]


def test_cli_help_lists_documented_flags() -> None:
    out = subprocess.run([sys.executable, "-m", "service", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    for flag in ("--repository", "--http-port", "--grpc-port", "--model-control-mode", "--drain-grace-s"):
        assert flag in out.stdout
    assert "Allow ``load``/``unload``" in out.stdout or "load``/``unload" in out.stdout


def test_version_policy_selection() -> None:
    assert VersionPolicy().select([3, 1, 2]) == [3]
    assert VersionPolicy(latest=2).select([3, 1, 2]) == [2, 3]
    assert VersionPolicy(all=True).select([2, 1]) == [1, 2]
    assert VersionPolicy(specific=[1, 5]).select([1, 2]) == [1]
    with pytest.raises(ValidationError, match="give one of latest, all, specific"):
        VersionPolicy(latest=1, all=True)


def test_model_config_overrides_server_defaults(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("max_batch_size: 8\nmax_queue_delay_us: 0\nproviders: [cuda, cpu]\n")
    config = resolve(load_serving_config(tmp_path), ServerSettings(max_queue_delay_us=500, max_batch_size=64))
    assert (config.max_batch_size, config.max_queue_delay_us, config.providers) == (8, 0, ("cuda", "cpu"))
    assert resolve(ServingConfig(), ServerSettings(max_queue_delay_us=500)).max_queue_delay_us == 500


@pytest.mark.parametrize(("text", "message"), [
    ("max_batch_size: [", "not valid YAML"),
    ("- a\n- b\n", "expected a mapping"),
    ("max_batch_sise: 4\n", "max_batch_sise: Extra inputs are not permitted"),
    ("providers: [tpu]\n", "providers.0"),
])  # fmt: skip
def test_bad_model_config_files(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(ModelLoadError, match=message):
        load_serving_config(tmp_path)
