"""``python -m bench.emulator``: run one emulated backend until SIGINT / SIGTERM.

After binding it prints exactly one line, ``EMULATOR READY <url>``, to stdout for a launcher.
Triton's metrics URL (its own port) goes to stderr as ``EMULATOR METRICS <url>`` and is in
``GET /_emulator/state`` as ``metricsUrl``.
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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.emulator", description=__doc__)
    p.add_argument("--kind", choices=KINDS, required=True)
    p.add_argument("--model", action="append", required=True, help="repeat for several models")
    p.add_argument("--gpu-gb", type=float, action="append", help="one per GPU (default: 24)")
    p.add_argument("--gpu-name", default="NVIDIA L4 (emulated)")
    p.add_argument("--tok-s", type=float, help="per-stream decode rate (default: class midpoint)")
    p.add_argument("--ttft-ms", type=float, default=50.0)
    p.add_argument("--slots", type=int, help="parallel requests per model (default: class)")
    p.add_argument(
        "--max-queue",
        type=int,
        help="ollama: waiting (default 512); tgi: in flight (default 128); vllm, triton: "
        "waiting, per model on triton (default unbounded); not on lmstudio, llamacpp",
    )
    p.add_argument("--load-time-scale", type=float, default=1.0)
    p.add_argument(
        "--keep-alive-s",
        type=float,
        help="idle seconds before unload (ollama default 300, lmstudio JIT TTL 3600)",
    )
    p.add_argument("--no-jit", action="store_true", help="lmstudio: no loading on demand")
    p.add_argument("--preload", action="append", help="models loaded at start (default: all)")
    p.add_argument("--served-name", action="append", help="vllm --served-model-name")
    p.add_argument(
        "--context-length", type=int, default=8192, help="llamacpp: -c, shared by the slots"
    )
    p.add_argument(
        "--prefill-tok-s",
        type=float,
        help="prompt tokens read per second before the first token (default: llamacpp 2000, "
        "others no per-token cost)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument(
        "--metrics-port", type=int, default=0, help="triton's metrics server (0: a free port)"
    )
    p.add_argument("--log-level", default="WARNING")
    return p


def parse_args(argv: Sequence[str] | None = None) -> tuple[EmulatorConfig, str, int, int]:
    """The emulator's settings, the host, port and metrics port to bind; exits with usage on a
    bad flag."""
    p = _parser()
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
            jit=not args.no_jit,
            preload=tuple(args.preload) if args.preload else None,
            served_names=tuple(args.served_name or ()),
            context_length=args.context_length,
            prefill_tok_s=args.prefill_tok_s,
        )
    except ValueError as exc:
        p.error(str(exc))
    if args.metrics_port and config.kind != "triton":
        p.error("--metrics-port is a triton option (other backends serve /metrics on --port)")
    return config, args.host, args.port, args.metrics_port


async def run(config: EmulatorConfig, host: str, port: int, metrics_port: int = 0) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with serve(config, host, port, metrics_port=metrics_port) as running:
        if config.kind == "triton":
            print(f"EMULATOR METRICS {running.metrics_url}", file=sys.stderr, flush=True)
        print(f"EMULATOR READY {running.url}", flush=True)
        await stop.wait()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    with contextlib.suppress(ImportError):
        import uvloop

        return uvloop.new_event_loop
    return None


def main(argv: Sequence[str] | None = None) -> None:
    config, host, port, metrics_port = parse_args(argv)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(run(config, host, port, metrics_port))


if __name__ == "__main__":
    main()
