"""``python -m service``: serve a model repository (flags mirror ``ServerSettings``; ``--help`` lists them).

``python -m service act|bench|info --policy NAME`` instead talks to a running server (see ``service.tools``).
"""

from __future__ import annotations

import asyncio
import sys


def main() -> None:
    if sys.argv[1:2] and sys.argv[1] in ("act", "bench", "info"):
        from service.tools import main as tools

        sys.exit(tools(sys.argv[1:]))
    from pydantic_settings import CliApp

    from service.logs import configure
    from service.server import Server
    from service.settings import ConfigurationError, ServerSettings

    settings = CliApp.run(ServerSettings)
    configure(settings.log_format, settings.log_level)
    try:
        asyncio.run(Server(settings).serve_forever())
    except ConfigurationError as exc:  # a refused start: one line, no traceback
        sys.exit(f"python -m service: {exc}")


if __name__ == "__main__":
    main()
