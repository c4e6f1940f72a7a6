"""``python -m service``: serve a model repository. Flags mirror ``ServerSettings`` (``--help`` lists them)."""

from __future__ import annotations

import asyncio

from pydantic_settings import CliApp

from service.logs import configure
from service.server import Server
from service.settings import ServerSettings


def main() -> None:
    settings = CliApp.run(ServerSettings)
    configure(settings.log_format, settings.log_level)
    asyncio.run(Server(settings).serve_forever())


if __name__ == "__main__":
    main()
