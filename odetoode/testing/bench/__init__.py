"""The benchmark harness: what every benchmark (``benchmarks/*.py``) and ``python -m service bench`` share.

* ``floor``: the floor server (``floor_process``: PolicyService, OIP gRPC and OIP REST binary, bare, in a process
  of its own; ``python -m odetoode.testing.bench`` runs it) and its ONNX Runtime session (``cpu_session``);
* ``timing``: timed sequential calls (``sample``, ``time_calls``), their percentiles (``Timing``, ``summarize``),
  rows measured in alternating rounds against their floors (``Row``, ``alternate``, ``Rounds``), fixed-rate pacing
  (``next_tick``);
* ``tables``: ratio tables (``ratio_table`` over ``Column``s made by ``value`` and ``ratio``; ``print_table``);
* ``roundtrips``: one round trip on an open stream as a call (``StreamRoundTrip`` for ``ActStream``,
  ``ModelStreamCall`` for OIP ``ModelStreamInfer``);
* ``baseline``: the server of a given checkout, for A/B runs of two commits (``checkout_server``);
* ``host``: CPU pinning of server and clients (``add_pin_options``, ``cpu_split``, ``affinity``) and what a process
  or process tree uses (``cpu_seconds``, ``rss_mib``, ``open_fds``, ``tree_usage``, sampled into a ``Series``).

Importable without torch and without starting anything; ONNX Runtime and gRPC are imported when used.
"""

from odetoode.testing.bench.baseline import checkout_server
from odetoode.testing.bench.floor import SERVICES, FloorProcess, cpu_session, floor_process
from odetoode.testing.bench.host import (
    Series,
    add_pin_options,
    affinity,
    cpu_seconds,
    cpu_split,
    open_fds,
    process_tree,
    rss_mib,
    tree_usage,
)
from odetoode.testing.bench.roundtrips import ModelStreamCall, StreamRoundTrip
from odetoode.testing.bench.tables import Column, print_table, ratio, ratio_table, value
from odetoode.testing.bench.timing import (
    Rounds,
    Row,
    Timing,
    alternate,
    format_ratios,
    next_tick,
    sample,
    summarize,
    time_calls,
    verdict,
)

__all__ = [
    "SERVICES", "Column", "FloorProcess", "ModelStreamCall", "Rounds", "Row", "Series", "StreamRoundTrip", "Timing",
    "add_pin_options", "affinity", "alternate", "checkout_server", "cpu_seconds", "cpu_session", "cpu_split",
    "floor_process", "format_ratios", "next_tick", "open_fds", "print_table", "process_tree", "ratio", "ratio_table",
    "rss_mib", "sample", "summarize", "time_calls", "tree_usage", "value", "verdict",
]  # fmt: skip
