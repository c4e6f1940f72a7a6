"""A small REST prediction client (KServe V1 and Open Inference Protocol v2 JSON) over ``httpx``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from odetoode.client.datatypes import DATATYPE_OF, DATATYPES


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
        self._datatypes: dict[tuple[str, str | None], dict[str, str]] = {}

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
        """Open Inference Protocol v2 ``infer`` with JSON tensors; returns every output as an array of its datatype.

        Each array is sent as the datatype the model gives its input (its metadata, fetched once per model and
        version), converted when that is safe: float64 to FP32 or FP16 (rounded to the nearest value), integers and
        booleans to floats, integers to other integers whose range holds every value, booleans to integers. A
        conversion that would lose information raises before anything is sent: ``TypeError`` for floats to integers
        or booleans, integers to booleans, and anything to or from strings; ``ValueError`` for integers out of the
        input's range and finite floats beyond it (which would become infinite)."""
        datatypes = self.input_datatypes(model, version=version)
        tensors = []
        for name, value in inputs.items():
            array = conform(np.asarray(value), datatypes.get(name), name)
            tensors.append({"name": name, "shape": list(array.shape), "datatype": _datatype_of(array, name),
                            "data": array.reshape(-1).tolist()})  # fmt: skip
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
        response = self._http.post(path, json={"inputs": tensors})
        if response.status_code >= 400:
            self._datatypes.pop((model, version), None)  # the model may have changed: look again next time
        _raise_for(response)
        return {o["name"]: _output_array(o) for o in response.json()["outputs"]}

    def input_datatypes(self, model: str, *, version: str | None = None) -> dict[str, str]:
        """The model's inputs and their Open Inference Protocol datatypes (``{"observation": "FP32"}``), from its
        metadata; fetched once per model and version, then kept."""
        key = (model, version)
        if key not in self._datatypes:
            response = self._http.get(f"/v2/models/{model}" + (f"/versions/{version}" if version else ""))
            _raise_for(response)
            self._datatypes[key] = {i["name"]: i["datatype"] for i in response.json()["inputs"]}
        return self._datatypes[key]


def conform(array: np.ndarray, datatype: str | None, name: str) -> np.ndarray:
    """``array`` converted to the input's ``datatype`` where no information is lost (see ``RestClient.infer``);
    unchanged when it has that datatype already, or when ``datatype`` is ``None`` (an input the model does not
    declare: the server says so)."""
    if datatype is None:
        return array
    source = array.dtype
    if datatype == "BYTES":
        if source.kind in "OSU":
            return array
        raise TypeError(f"input {name!r} is BYTES (strings); got a {source} array")
    target = DATATYPES.get(datatype)
    if target is None:
        raise TypeError(f"input {name!r} has datatype {datatype}, which this client cannot send")
    if source == target:
        return array
    what = f"input {name!r} is {datatype}; got a {source} array"
    if source.kind not in "biuf" or (target.kind == "b" and source.kind != "b"):
        raise TypeError(f"{what}: converting it would lose information; convert it yourself")
    if source.kind == "f" and target.kind in "iu":
        raise TypeError(f"{what}: converting floats to integers would drop their fractions; round and convert it "
                        f"yourself (e.g. np.rint(a).astype(np.{target}))")  # fmt: skip
    if source.kind in "iu" and target.kind in "iu" and array.size:
        info = np.iinfo(target)
        low, high = array.min(), array.max()
        if low < info.min or high > info.max:
            raise ValueError(f"{what}: its values {low}..{high} do not fit {datatype} ({info.min}..{info.max})")
    with np.errstate(over="ignore", invalid="ignore"):
        converted = array.astype(target)
    if target.kind == "f" and np.any(np.isinf(converted) & (np.isfinite(array) if source.kind == "f" else True)):
        raise ValueError(f"{what}: some finite values are beyond {datatype}'s range (they would become infinite)")
    return converted


class RestError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def _datatype_of(array: np.ndarray, name: str) -> str:
    if array.dtype.kind in "OSU":
        return "BYTES"
    try:
        return DATATYPE_OF[array.dtype]
    except KeyError:
        raise TypeError(f"input {name!r}: numpy dtype {array.dtype} has no Open Inference Protocol datatype") from None


def _output_array(output: dict[str, Any]) -> np.ndarray:
    dtype = DATATYPES.get(output["datatype"], np.dtype(object))
    return np.asarray(output["data"], dtype=dtype).reshape(output["shape"])


def _raise_for(response: Any) -> None:
    if response.status_code >= 400:
        try:
            message = response.json().get("error", response.text)
        except ValueError:
            message = response.text
        raise RestError(response.status_code, message)


def _jsonable(instances: Sequence[Any]) -> Any:
    return np.asarray(instances).tolist() if isinstance(instances, np.ndarray) else instances
