"""A/B in one run: servers of two checkouts measured in the same rounds, against the same floor.

Two runs of a benchmark, one per commit, differ by the machine's drift between them as much as by the change. And
within one run, two server processes of the same code differ too -- by several percent in CPU per call, the process
itself (where its memory landed, its hash seed) rather than its code -- so one process per commit cannot resolve a
change of a few percent. ``benchmarks/ab_latency.py`` therefore starts several processes of each checkout, the same
way for both (``checkout_server``), and compares the checkouts by their processes' mean.

A checkout's server is ``python -m service`` run in the checkout and with it first on ``PYTHONPATH`` (``-m`` puts the
working directory first): its ``service`` package and its ``odetoode`` modules are found before the installed ones
(a checkout whose ``odetoode`` is a namespace package still falls back to the installed distributions for modules it
does not have; third-party packages are this environment's).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from odetoode.testing.servers import ServerProcess


@contextlib.contextmanager
def checkout_server(checkout: Path, repository: Path, *args: str) -> Iterator[ServerProcess]:
    """``checkout``'s server (``python -m service`` with ``args``) serving ``repository``."""
    from odetoode.testing.servers import server_process  # the server's own imports, only when one is started

    if not (checkout / "service" / "__main__.py").is_file():
        raise SystemExit(f"{checkout}: not a checkout of this project (no service/__main__.py)")
    checkout = checkout.resolve()
    path = [str(checkout), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    with server_process(repository, *args, env={"PYTHONPATH": os.pathsep.join(path)}, cwd=checkout) as server:
        yield server
