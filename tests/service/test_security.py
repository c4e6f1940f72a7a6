"""Bearer-token auth on every data path, TLS and mutual TLS on both transports, with our SDK and tritonclient."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from service._proto.inference import grpc_service_pb2 as pb
from service.client import PolicyClient, RestClient, RestError
from tests.service.clients import infer_proto, observation_json, stub
from tests.service.models import OBS, add_policy
from tests.service.servers import running_server

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("secure")
    add_policy(root, "policy")
    return root


def test_auth_refuses_every_data_path_without_the_token(repo: Path) -> None:
    with running_server(repo, auth_tokens=[TOKEN, "rotated-token"], repository_api=True) as server:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
            for method, path, body in (("POST", "/v2/models/policy/infer", observation_json()),
                                       ("POST", "/v1/models/policy:predict", {"instances": [[0.0] * OBS]}),
                                       ("GET", "/v2/models/policy", None), ("POST", "/v2/repository/index", None),
                                       ("POST", "/v2/repository/models/policy/unload", None)):  # fmt: skip
                r = httpx.request(method, server.http + path, json=body, headers=headers)
                assert r.status_code == 401, (path, headers)
                assert r.json()["error"].startswith("authorization:") and r.headers["www-authenticate"]
        for metadata in ((), (("authorization", "Bearer wrong"),)):
            channel, s = stub(server.grpc)
            with channel, pytest.raises(grpc.RpcError) as info:
                s.ModelInfer(infer_proto("policy"), metadata=metadata)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with PolicyClient(server.grpc) as client:
                for call in (lambda c=client: c.act("policy", np.zeros(OBS)), lambda c=client: c.get_policy("policy")):
                    with pytest.raises(grpc.RpcError) as info:
                        call()
                    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
                stream = client.stream("policy")
                stream.send(np.zeros(OBS), 0)
                with pytest.raises(grpc.RpcError) as info:
                    stream.receive(timeout=10)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
                stream.close()
        # health, docs and metrics stay open (the defaults): probes and scrapers need no secret
        assert httpx.get(server.http + "/v2/health/ready").status_code == 200
        assert httpx.get(server.http + "/metrics").status_code == 200 and httpx.get(server.metrics_url).is_success
        channel, _ = stub(server.grpc)
        with channel:
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
        # ... and the right token works everywhere, either of the accepted ones
        with PolicyClient(server.grpc, token="rotated-token") as client:
            assert client.act("policy", np.zeros(OBS)).values.shape == (6,)
            stream = client.stream("policy")
            stream.send(np.zeros(OBS), 5)
            assert stream.receive(timeout=10).sequence == 5  # type: ignore[union-attr]
            stream.close()
        with RestClient(server.http, token=TOKEN) as rest:
            assert len(rest.predict("policy", [[0.0] * OBS])[0]) == 6
        with RestClient(server.http) as rest, pytest.raises(RestError, match="HTTP 401"):
            rest.predict("policy", [[0.0] * OBS])
        auth = {"authorization": f"Bearer {TOKEN}"}
        g = grpcclient.InferenceServerClient(server.grpc)
        x = np.zeros((1, OBS), dtype=np.float32)
        i = grpcclient.InferInput("observation", [1, OBS], "FP32")
        i.set_data_from_numpy(x)
        assert g.infer("policy", [i], headers=auth).as_numpy("action").shape == (1, 6)
        with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
            g.infer("policy", [i])
        g.close()
        h = httpclient.InferenceServerClient(server.http.removeprefix("http://"))
        hi = httpclient.InferInput("observation", [1, OBS], "FP32")
        hi.set_data_from_numpy(x)
        assert h.infer("policy", [hi], headers=auth).as_numpy("action").shape == (1, 6)
        h.close()


def test_metrics_can_be_closed_too(repo: Path, tmp_path: Path) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text(f"\n{TOKEN}\n")
    with running_server(repo, auth_token_file=token_file, auth_open_metrics=False) as server:
        assert server.server.metrics_server is None  # the open metrics port is not started
        assert httpx.get(server.http + "/metrics").status_code == 401
        r = httpx.get(server.http + "/metrics", headers={"authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200 and "odetoode_requests_total" in r.text


@dataclass
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    root = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("robot-1")
    out = Certificates(*(root / n for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")))
    ca.cert_pem.write_to_path(str(out.ca))
    out.server_cert.write_bytes(b"".join(p.bytes() for p in server.cert_chain_pems))
    server.private_key_pem.write_to_path(str(out.server_key))
    out.client_cert.write_bytes(b"".join(p.bytes() for p in client.cert_chain_pems))
    client.private_key_pem.write_to_path(str(out.client_key))
    return out


@pytest.fixture
def tls_server(repo: Path, certs: Certificates) -> Iterator[object]:
    with running_server(repo, tls_cert=certs.server_cert, tls_key=certs.server_key) as server:
        yield server


def test_tls_on_grpc_and_https(tls_server: object, certs: Certificates) -> None:
    server = tls_server
    port, http = server.server.grpc_port, server.server.http_port  # type: ignore[attr-defined]
    credentials = grpc.ssl_channel_credentials(root_certificates=certs.ca.read_bytes())
    with PolicyClient(f"localhost:{port}", credentials=credentials) as client:
        assert client.act("policy", np.zeros(OBS)).version == "1"
    with RestClient(f"https://localhost:{http}", ca_file=str(certs.ca)) as rest:
        assert len(rest.predict("policy", [[0.0] * OBS])) == 1
    with pytest.raises(httpx.ConnectError):  # a client that does not trust the CA refuses the server
        httpx.get(f"https://localhost:{http}/v2/health/ready")
    g = grpcclient.InferenceServerClient(f"localhost:{port}", ssl=True, root_certificates=str(certs.ca))
    assert g.is_server_ready()
    g.close()
    h = httpclient.InferenceServerClient(f"localhost:{http}", ssl=True, ssl_options={"ca_certs": str(certs.ca)})
    assert h.is_server_ready()
    h.close()
    channel, plaintext = stub(f"localhost:{port}")
    with channel, pytest.raises(grpc.RpcError):  # plaintext is not accepted on a TLS port
        plaintext.ServerLive(pb.ServerLiveRequest(), timeout=2)


def test_mutual_tls_requires_a_client_certificate(repo: Path, certs: Certificates) -> None:
    with running_server(repo, tls_cert=certs.server_cert, tls_key=certs.server_key,
                        tls_client_ca=certs.ca) as server:  # fmt: skip
        port, http = server.server.grpc_port, server.server.http_port
        anonymous = grpc.ssl_channel_credentials(root_certificates=certs.ca.read_bytes())
        with PolicyClient(f"localhost:{port}", credentials=anonymous, timeout=3) as client, \
                pytest.raises(grpc.RpcError):  # fmt: skip
            client.act("policy", np.zeros(OBS))
        robot = grpc.ssl_channel_credentials(certs.ca.read_bytes(), certs.client_key.read_bytes(),
                                             certs.client_cert.read_bytes())  # fmt: skip
        with PolicyClient(f"localhost:{port}", credentials=robot) as client:
            assert client.act("policy", np.zeros(OBS)).values.shape == (6,)
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"https://localhost:{http}/v2/health/ready", verify=ssl.create_default_context(cafile=certs.ca))
        with RestClient(f"https://localhost:{http}", ca_file=str(certs.ca),
                        client_cert=(str(certs.client_cert), str(certs.client_key))) as rest:  # fmt: skip
            assert len(rest.predict("policy", [[0.0] * OBS])) == 1


def test_tls_settings_are_validated(repo: Path, certs: Certificates) -> None:
    from pydantic import ValidationError

    from service.settings import ServerSettings

    with pytest.raises(ValidationError, match="tls_cert and tls_key go together"):
        ServerSettings(repository=repo, tls_cert=certs.server_cert)
    with pytest.raises(ValidationError, match="needs tls_cert"):
        ServerSettings(repository=repo, tls_client_ca=certs.ca)
