"""``python -m router``: run the inference router until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from node_protocol.collector import settle_for_serving
from router.app import serve
from router.logs import configure_logging
from router.settings import RouterSettings, SettingsError, load_settings

log = logging.getLogger("router")


async def _main(settings: RouterSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with serve(settings) as running:
        settle_for_serving()
        print(f"ROUTER READY {running.url}", flush=True)
        log.info("router serving on %s (default group %s)", running.url, settings.default_group)
        await stop.wait()
        log.info("router stopping")


def main() -> None:
    try:
        settings = load_settings(sys.argv[1:], os.environ)
    except SettingsError as exc:
        print("router:", *str(exc).split(), file=sys.stderr)  # one line, whatever it quotes
        raise SystemExit(2) from exc
    configure_logging(settings.log_format)
    try:
        import uvloop
    except ImportError:
        asyncio.run(_main(settings))
    else:
        uvloop.run(_main(settings))


if __name__ == "__main__":
    main()
