"""The router with a planted delay, to prove the CI gate catches a slower router.

``python -m bench.slowed_router --delay-ms 20 --burn-ms 0 -- <router flags>`` runs the real
router (``python -m router``) with one extra middleware in front of the client API: it sleeps
``delay-ms`` (a latency regression) and spins the CPU for ``burn-ms`` (a CPU-cost regression)
on every request whose path holds ``/v1/``. Only the benchmark harness starts it; nothing in
``router/`` knows about it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

import router.__main__ as router_main
import router.app as router_app
from router.settings import RouterSettings


def delaying(delay_s: float, burn_s: float) -> Middleware:
    @web.middleware
    async def planted_delay(request: web.Request, handler: Handler) -> web.StreamResponse:
        if "/v1/" in request.path:
            if delay_s:
                await asyncio.sleep(delay_s)
            end = time.perf_counter() + burn_s
            while time.perf_counter() < end:
                pass
        return await handler(request)

    return planted_delay


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.slowed_router")
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument("--burn-ms", type=float, default=0.0)
    args, rest = p.parse_known_args()
    middleware = delaying(args.delay_ms / 1000, args.burn_ms / 1000)
    make_app = router_app.make_app

    def slowed_make_app(settings: RouterSettings) -> web.Application:
        app = make_app(settings)
        app.middlewares.insert(0, middleware)
        return app

    router_app.make_app = slowed_make_app
    sys.argv = ["router", *[a for a in rest if a != "--"]]
    router_main.main()


if __name__ == "__main__":
    main()
