"""Bearer-token auth on every data path, TLS and mutual TLS on both transports, with our SDK and tritonclient."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
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
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from odetoode.client import PolicyClient, RestClient, RestError
from odetoode.proto.inference import grpc_service_pb2 as pb
from odetoode.proto.inference import grpc_service_pb2_grpc as pb_grpc
from odetoode.testing.clients import infer_proto, observation_json, stub
from odetoode.testing.models import OBS, add_policy
from odetoode.testing.servers import RunningServer, child_env, running_server, server_process
from service.settings import ConfigurationError

ROOT = Path(__file__).resolve().parents[2]

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("secure")
    add_policy(root, "policy")
    return root


def assert_stream_refused(client: PolicyClient) -> None:
    """An ActStream opened by ``client`` ends UNAUTHENTICATED at its first observation."""
    stream = client.stream("policy")
    stream.send(np.zeros(OBS), 0)
    with pytest.raises(grpc.RpcError) as info:
        stream.receive(timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    stream.close()


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
                assert_stream_refused(client)
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


def unauthenticated_refusals(metrics_text: str) -> dict[str, float]:
    """``odetoode_request_refusals_total{reason="Unauthenticated"}`` by protocol, from a scrape."""
    return {
        sample.labels["protocol"]: sample.value
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if sample.name == "odetoode_request_refusals_total" and sample.labels["reason"] == "Unauthenticated"
    }


def test_calls_refused_for_their_token_are_counted_by_protocol(repo: Path) -> None:
    """A call refused for its token never reaches a handler, so only the authentication adapters can count it: each
    refusal once, under the protocol it came by. Open paths, accepted tokens and unknown methods are not refusals."""
    with running_server(repo, auth_tokens=[TOKEN]) as server:
        before = unauthenticated_refusals(httpx.get(server.metrics_url).text)
        assert before == {"rest": 0, "grpc": 0, "policy": 0}  # there from the start: rate() sees a first refusal
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
            r = httpx.post(server.http + "/v2/models/policy/infer", json=observation_json(), headers=headers)
            assert r.status_code == 401
        channel, s = stub(server.grpc)
        with channel:
            with pytest.raises(grpc.RpcError) as info:
                s.ModelInfer(infer_proto("policy"))
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as info:
                channel.unary_unary("/no.such.Service/Method")(b"")
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
        with PolicyClient(server.grpc) as client:
            with pytest.raises(grpc.RpcError) as info:
                client.act("policy", np.zeros(OBS))
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert_stream_refused(client)
        with PolicyClient(server.grpc, token=TOKEN) as client:
            assert client.act("policy", np.zeros(OBS)).values.shape == (6,)
        with RestClient(server.http, token=TOKEN) as rest:
            assert len(rest.predict("policy", [[0.0] * OBS])[0]) == 6
        assert httpx.get(server.http + "/v2/health/ready").status_code == 200
        assert unauthenticated_refusals(httpx.get(server.metrics_url).text) == {"rest": 3, "grpc": 1, "policy": 2}


def test_metrics_can_be_closed_too(repo: Path, tmp_path: Path) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text(f"\n{TOKEN}\n")
    with running_server(repo, auth_token_file=token_file, auth_open_metrics=False) as server:
        assert server.server.metrics_server is None  # the open metrics port is not started
        assert httpx.get(server.http + "/metrics").status_code == 401
        r = httpx.get(server.http + "/metrics", headers={"authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200 and "odetoode_requests_total" in r.text
        # a scraper without the token is refused like any caller, and counted: the scrape that failed shows up
        assert unauthenticated_refusals(r.text)["rest"] == 1


# -- authentication fails closed, and follows a rotated secret ------------------------------------------------------

NO_TOKENS = {"empty": "", "blank": "\n   \n\t\n", "comments only": "# the token goes here\n\n#another\n"}


@pytest.mark.parametrize("content", NO_TOKENS)
def test_a_token_file_without_tokens_refuses_the_start(repo: Path, tmp_path: Path, content: str) -> None:
    """Never a server without the authentication its settings ask for: in process and as ``python -m service``."""
    token_file = tmp_path / "tokens"
    token_file.write_text(NO_TOKENS[content])
    with pytest.raises(ConfigurationError, match="auth_token_file: it holds no token"):
        running_server(repo, auth_token_file=token_file).__enter__()
    out = subprocess.run(
        [sys.executable, "-m", "service", "--repository", str(repo), "--auth-token-file", str(token_file)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode != 0
    assert "auth_token_file: it holds no token" in out.stderr and "Traceback" not in out.stderr


def test_a_missing_token_file_or_an_empty_token_refuses_the_start(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="auth_token_file: cannot read it"):
        running_server(repo, auth_token_file=tmp_path / "absent").__enter__()
    with pytest.raises(ConfigurationError, match="auth_tokens: a token is empty"):
        running_server(repo, auth_tokens=[TOKEN, " "]).__enter__()


def test_comment_lines_are_not_tokens(repo: Path, tmp_path: Path) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text(f"# rotate monthly\n\n  {TOKEN}  \n")
    with running_server(repo, auth_token_file=token_file) as server:
        assert rest_status(server, "# rotate monthly") == 401
        assert rest_status(server, "#") == 401
        assert rest_status(server, TOKEN) == 200


def kubernetes_secret(volume: Path, generation: int, content: str) -> None:
    """Writes ``content`` as the key ``token`` of a secret volume the way the kubelet updates one: the files go in a
    new timestamped directory, a new ``..data`` symlink to it is renamed over the old one (atomically), and the old
    directory goes; ``token`` itself is a symlink to ``..data/token`` and never changes."""
    timestamped = volume / f"..2026_11_30_{generation:02d}"
    timestamped.mkdir()
    (timestamped / "token").write_text(content)
    (volume / "..data_tmp").symlink_to(timestamped.name)
    old = (volume / "..data").resolve() if (volume / "..data").exists() else None
    os.replace(volume / "..data_tmp", volume / "..data")
    if old is not None:
        shutil.rmtree(old)
    if not (volume / "token").is_symlink():
        (volume / "token").symlink_to("..data/token")


def test_a_rotated_kubernetes_secret_is_taken_without_a_restart(repo: Path, tmp_path: Path) -> None:
    """Rotation by the ``..data`` symlink swap: the new token is accepted and the old one refused within a few
    reload intervals; a rotation to a secret without tokens changes nothing (never fails open)."""
    volume = tmp_path / "secret"
    volume.mkdir()
    kubernetes_secret(volume, 1, f"{TOKEN}\n")
    with running_server(repo, auth_token_file=volume / "token", auth_token_reload_s=0.05) as server:
        assert rest_status(server, TOKEN) == 200 and rest_status(server, "next-token") == 401
        kubernetes_secret(volume, 2, "next-token\n")
        assert wait_until(lambda: rest_status(server, "next-token") == 200)
        assert rest_status(server, TOKEN) == 401
        with grpc.insecure_channel(server.grpc) as channel:
            metadata = (("authorization", "Bearer next-token"),)
            assert pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), metadata=metadata).live
        kubernetes_secret(volume, 3, "# emptied by mistake\n")
        time.sleep(0.5)  # ten reload intervals
        assert rest_status(server, "next-token") == 200
        assert rest_status(server, "no-token-at-all") == 401


def test_the_container_health_check_sends_the_token_when_health_is_closed(repo: Path, tmp_path: Path) -> None:
    """docker/healthcheck.py (the images' HEALTHCHECK) against a server whose health needs the token."""
    token_file = tmp_path / "tokens"
    token_file.write_text(f"# the probe reads the same file\n{TOKEN}\n")
    with server_process(repo, "--auth-token-file", str(token_file), "--auth-open-health", "false") as proc:
        check = [sys.executable, str(ROOT / "docker" / "healthcheck.py")]
        base = {"ODETOODE_HTTP_PORT": str(proc.http_port), "ODETOODE_AUTH_OPEN_HEALTH": "false"}
        with_token = subprocess.run(check, env=child_env({**base, "ODETOODE_AUTH_TOKEN_FILE": str(token_file)}),
                                    capture_output=True, text=True, timeout=30)  # fmt: skip
        listed = subprocess.run(check, env=child_env({**base, "ODETOODE_AUTH_TOKENS": f'["{TOKEN}"]'}),
                                capture_output=True, text=True, timeout=30)  # fmt: skip
        without = subprocess.run(check, env=child_env(base), capture_output=True, text=True, timeout=30)
    assert with_token.returncode == 0, with_token.stderr
    assert listed.returncode == 0, listed.stderr
    assert without.returncode == 1 and "401" in without.stderr


def rest_status(server: RunningServer, token: str) -> int:
    return httpx.post(server.http + "/v2/models/policy/infer", json=observation_json(),
                      headers={"authorization": f"Bearer {token}"}, timeout=30).status_code  # fmt: skip


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


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


# -- what errors tell ------------------------------------------------------------------------------------------------


def test_client_visible_errors_carry_no_server_paths(tmp_path: Path) -> None:
    """A model directory and a damaged file reached through symlinks: whatever a client can read about them -- the
    error of a request, the repository index, a failed load -- names neither the repository nor where the links
    point."""
    repository, elsewhere = tmp_path / "repository", tmp_path / "elsewhere"
    (elsewhere / "broken" / "1").mkdir(parents=True)
    (elsewhere / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx file at all")
    repository.mkdir()
    (repository / "broken").symlink_to(elsewhere / "broken")
    add_policy(repository, "policy")
    with running_server(repository, repository_api=True) as server:
        texts = [
            httpx.post(server.http + "/v2/models/broken/infer", json=observation_json(), timeout=30).text,
            httpx.post(server.http + "/v2/repository/index", timeout=30).text,
            httpx.post(server.http + "/v2/repository/models/broken/load", timeout=30).text,
        ]
        with grpc.insecure_channel(server.grpc) as channel:
            stub_ = pb_grpc.GRPCInferenceServiceStub(channel)
            texts.append(str(stub_.RepositoryIndex(pb.RepositoryIndexRequest())))
            with pytest.raises(grpc.RpcError) as caught:
                stub_.ModelInfer(infer_proto("broken"), timeout=30)
            texts.append(caught.value.details() or "")
    assert "model.onnx: ONNX Runtime cannot load it" in texts[1]  # the reason is there...
    for text in texts:
        assert str(tmp_path) not in text and "/elsewhere" not in text, text  # ...without where the file is


def test_the_repository_index_needs_the_repository_api(repo: Path) -> None:
    """Like load and unload: it tells every model name and why versions failed."""
    with running_server(repo) as server:
        r = httpx.post(server.http + "/v2/repository/index", timeout=30)
        assert r.status_code == 403 and "--repository-api true" in r.json()["error"]
        with grpc.insecure_channel(server.grpc) as channel, pytest.raises(grpc.RpcError) as caught:
            pb_grpc.GRPCInferenceServiceStub(channel).RepositoryIndex(pb.RepositoryIndexRequest(), timeout=30)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
