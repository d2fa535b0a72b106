"""``python -m node_agent``: run the agent until SIGTERM/SIGINT.

Prints exactly one line ``AGENT READY <url>`` to stdout once the socket is bound (a launcher
parses it); logs go to stderr.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from node_protocol.collector import settle_for_serving

from .app import serve
from .settings import AgentSettings, SettingsError, load_settings

log = logging.getLogger("node_agent")


async def run(settings: AgentSettings) -> None:
    """Serve until a stop signal, then deregister and drain."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with serve(settings) as agent:
            settle_for_serving()
            sys.stdout.write(f"AGENT READY {agent.url}\n")
            sys.stdout.flush()
            await stop.wait()
            log.info("stop signal: deregistering and draining in-flight requests")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def _runner() -> asyncio.Runner:
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(sys.argv[1:] if argv is None else argv, os.environ)
    except SettingsError as exc:
        print("node_agent:", *str(exc).split(), file=sys.stderr)  # one line, whatever it quotes
        return 2
    logging.basicConfig(
        level=settings.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    with _runner() as runner:
        try:
            runner.run(run(settings))
        except OSError as exc:  # e.g. the port is taken
            log.error("cannot start: %s", exc)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
