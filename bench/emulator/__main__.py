"""``python -m bench.emulator``: run one emulated backend until SIGINT / SIGTERM.

After binding it prints exactly one line, ``EMULATOR READY <url>``, to stdout for a launcher.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Sequence

from .app import serve
from .config import KINDS, EmulatorConfig


def parse_args(argv: Sequence[str] | None = None) -> tuple[EmulatorConfig, str, int]:
    """The emulator's settings and the address to bind; exits with usage on a bad flag."""
    p = argparse.ArgumentParser(prog="python -m bench.emulator", description=__doc__)
    p.add_argument("--kind", choices=KINDS, required=True)
    p.add_argument("--model", action="append", required=True, help="repeat for several models")
    p.add_argument("--gpu-gb", type=float, action="append", help="one per GPU (default: 24)")
    p.add_argument("--gpu-name", default="NVIDIA L4 (emulated)")
    p.add_argument("--tok-s", type=float, help="per-stream decode rate (default: class midpoint)")
    p.add_argument("--ttft-ms", type=float, default=50.0)
    p.add_argument("--slots", type=int, help="parallel requests per model (default: class)")
    p.add_argument("--max-queue", type=int, help="default: 512 on ollama, unbounded on vllm")
    p.add_argument("--load-time-scale", type=float, default=1.0)
    p.add_argument("--keep-alive-s", type=float, default=300.0)
    p.add_argument("--preload", action="append", help="models loaded at start (default: all)")
    p.add_argument("--served-name", action="append", help="vllm --served-model-name")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    try:
        config = EmulatorConfig(
            kind=args.kind,
            models=tuple(args.model),
            gpu_memory_gb=tuple(args.gpu_gb or (24.0,)),
            gpu_name=args.gpu_name,
            tok_s=args.tok_s,
            ttft_s=args.ttft_ms / 1000.0,
            slots=args.slots,
            max_queue=args.max_queue,
            load_time_scale=args.load_time_scale,
            keep_alive_s=args.keep_alive_s,
            preload=tuple(args.preload) if args.preload else None,
            served_names=tuple(args.served_name or ()),
        )
    except ValueError as exc:
        p.error(str(exc))
    return config, args.host, args.port


async def run(config: EmulatorConfig, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with serve(config, host, port) as running:
        print(f"EMULATOR READY {running.url}", flush=True)
        await stop.wait()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    with contextlib.suppress(ImportError):
        import uvloop

        return uvloop.new_event_loop
    return None


def main(argv: Sequence[str] | None = None) -> None:
    config, host, port = parse_args(argv)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(run(config, host, port))


if __name__ == "__main__":
    main()
