"""A bare aiohttp + uvloop pass-through proxy: the floor any aiohttp router pays.

``python -m bench.reference_proxy --upstream URL [--port 0]`` forwards each request's method,
path and body to ``URL`` over one pooled session; event streams are relayed chunk by chunk, other
answers whole. Prints ``PROXY READY <url>`` once bound. No routing, no accounting: only the hop.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import aiohttp
import uvloop
from aiohttp import web

UPSTREAM = web.AppKey("upstream", str)
SESSION = web.AppKey("session", aiohttp.ClientSession)


async def _forward(request: web.Request) -> web.StreamResponse:
    url, body = request.app[UPSTREAM] + request.path_qs, await request.read()
    headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
    async with request.app[SESSION].request(request.method, url, data=body, headers=headers) as up:
        ctype = up.headers.get("Content-Type", "application/json")
        if not ctype.startswith("text/event-stream"):
            return web.Response(
                status=up.status,
                body=await up.read(),
                content_type=None,
                headers={"Content-Type": ctype},
            )
        resp = web.StreamResponse(status=up.status, headers={"Content-Type": ctype})
        await resp.prepare(request)
        async for chunk in up.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
        return resp


async def serve(upstream: str, host: str, port: int) -> None:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    app.router.add_route("*", "/{tail:.*}", _forward)
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        app[SESSION] = session
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        print(f"PROXY READY http://{host}:{runner.addresses[0][1]}", flush=True)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.reference_proxy")
    p.add_argument("--upstream", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    uvloop.run(serve(args.upstream, args.host, args.port))


if __name__ == "__main__":
    main()
