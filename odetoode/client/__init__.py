"""Robot client SDK for ``odetoode.v1.PolicyService`` (sync and asyncio), plus a small REST prediction client.

A robot installs it on its own, without the server or the trainer: ``pip install ./odetoode`` (the
``odetoode-client`` distribution: ``grpcio``, ``protobuf``, ``numpy``; ``httpx`` for REST with the ``rest`` extra).
It brings the generated stubs it needs (``odetoode.proto``) and nothing outside the ``odetoode`` namespace.

* one persistent channel per client, with keepalive pings every 10 s (the server accepts one every 5 s, so no
  GOAWAY "too_many_pings") and gRPC's own retry policy: unary calls are retried with exponential back-off on
  UNAVAILABLE (a server restarting, a connection being re-established);
* a deadline on every call (``timeout``);
* ``control_loop``: a fixed-rate loop over ``ActStream`` that survives server restarts (it reconnects with back-off,
  counting the cycles it could not serve) and reports the achieved rate and latency percentiles.

Example::

    with PolicyClient("localhost:8001") as client:
        info = client.get_policy("halfcheetah")
        action = client.act("halfcheetah", observation)            # Action(values=..., sequence=0, ...)
        report = client.control_loop("halfcheetah", hz=100, on_observation=lambda seq, act: read_sensors())
"""

from odetoode.client.aio import AsyncPolicyClient
from odetoode.client.policy import ActionStream, LoopReport, PolicyClient
from odetoode.client.rest import RestClient, RestError
from odetoode.client.wire import ActFailure, Action, PolicyInfo, channel_options, policy_document

__all__ = ["ActFailure", "Action", "ActionStream", "AsyncPolicyClient", "LoopReport", "PolicyClient", "PolicyInfo",
           "RestClient", "RestError", "channel_options", "policy_document"]  # fmt: skip
