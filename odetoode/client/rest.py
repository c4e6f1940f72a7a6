"""A small REST prediction client (KServe V1 and Open Inference Protocol v2 JSON) over ``httpx``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class RestClient:
    """Predictions over REST (KServe V1 and Open Inference Protocol v2 JSON) with ``httpx``."""

    def __init__(self, base_url: str = "http://localhost:8000", *, timeout: float = 5.0, token: str | None = None,
                 ca_file: str | None = None, client_cert: tuple[str, str] | None = None) -> None:  # fmt: skip
        """``ca_file``: the CA bundle that signed an HTTPS server's certificate (default: the system's);
        ``client_cert``: a (certificate, key) pair for mutual TLS; ``token``: a bearer token."""
        import ssl

        import httpx

        headers = {"authorization": f"Bearer {token}"} if token else {}
        context = ssl.create_default_context(cafile=ca_file)
        if client_cert is not None:
            context.load_cert_chain(*client_cert)
        self._http = httpx.Client(base_url=base_url, timeout=timeout, headers=headers, verify=context)

    def __enter__(self) -> RestClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def predict(self, model: str, instances: Sequence[Any]) -> list[Any]:
        """KServe V1 ``:predict``: ``instances`` in, ``predictions`` out."""
        response = self._http.post(f"/v1/models/{model}:predict", json={"instances": _jsonable(instances)})
        _raise_for(response)
        return response.json()["predictions"]

    def infer(self, model: str, inputs: dict[str, np.ndarray], *, version: str | None = None) -> dict[str, np.ndarray]:
        """Open Inference Protocol v2 ``infer`` with JSON tensors; returns every output as an array."""
        body = {"inputs": [{"name": n, "shape": list(a.shape), "datatype": _DATATYPES[a.dtype.str[1:]],
                            "data": a.reshape(-1).tolist()} for n, a in inputs.items()]}  # fmt: skip
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
        response = self._http.post(path, json=body)
        _raise_for(response)
        return {
            o["name"]: np.asarray(o["data"], dtype=np.float32).reshape(o["shape"]) for o in response.json()["outputs"]
        }


_DATATYPES = {"f4": "FP32", "f8": "FP64", "i8": "INT64", "i4": "INT32"}


class RestError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def _raise_for(response: Any) -> None:
    if response.status_code >= 400:
        try:
            message = response.json().get("error", response.text)
        except ValueError:
            message = response.text
        raise RestError(response.status_code, message)


def _jsonable(instances: Sequence[Any]) -> Any:
    return np.asarray(instances).tolist() if isinstance(instances, np.ndarray) else instances
