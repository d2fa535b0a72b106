"""Start and stop llama.cpp's real servers: ``llama-server`` and llama-cpp-python's server.

Each runs as a child process on a port of its own (:func:`free_port` picks one), ready once it
answers its health path (``/health`` on llama-server, ``/v1/models`` on the Python server, which
has no health route). The port stays the same across :meth:`EngineProcess.restart`, so an agent
beside it finds it again. Output goes to a log file whose tail is quoted when a start fails.
:mod:`bench.llamacpp.fleet` puts such engines behind the router with an agent each.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import aiohttp

from .paths import python_package_dir, server_binary

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
POLL_S = 0.05
ALIAS = "tiny"


def free_port() -> int:
    """A TCP port nothing listens on now (the OS's pick for port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_ready(
    url: str, health_path: str = "/health", alive: Callable[[], bool] = lambda: True
) -> None:
    """Until ``url + health_path`` answers 200 (llama-server answers 503 while it loads);
    :class:`RuntimeError` as soon as ``alive()`` says the process is gone. Unbounded: callers
    wrap it in a timeout."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as session:
        while True:
            if not alive():
                raise RuntimeError(f"{url} exited while starting")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url + health_path) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(POLL_S)


class EngineProcess:
    """One engine process on a fixed port: start, stop, kill, freeze, restart."""

    def __init__(
        self,
        label: str,
        argv: Sequence[str],
        port: int,
        health_path: str,
        *,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.label = label
        self.argv = list(argv)
        self.port = port
        self.health_path = health_path
        self.env = env
        self.log_path = log_path or Path(os.devnull)
        self.proc: asyncio.subprocess.Process | None = None
        self.frozen = False  # stopped by freeze(), not since started again

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Spawn the process and wait until its health path answers 200."""
        self.frozen = False
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self.env,
            )
        try:
            async with asyncio.timeout(timeout_s):
                await wait_ready(self.url, self.health_path, lambda: self.running)
        except RuntimeError as exc:
            await self.stop()
            raise RuntimeError(f"{self.label} exited while starting:\n{self.log_tail()}") from exc
        except BaseException:
            await self.stop()
            raise

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    async def stop(self) -> None:
        """SIGTERM (and SIGCONT, should it be frozen), then SIGKILL if it does not exit."""
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            proc.send_signal(signal.SIGCONT)
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        self.proc = None

    async def kill(self) -> None:
        """SIGKILL: the engine dies at once, its connections reset."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self.proc = None

    def freeze(self) -> None:
        """SIGSTOP: the engine accepts connections (the kernel does) but answers nothing."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGSTOP)
            self.frozen = True

    async def restart(self) -> None:
        await self.stop()
        await self.start()


def llama_server(
    model: Path,
    *,
    port: int | None = None,
    parallel: int = 2,
    context: int = 8192,
    threads: int = 1,
    embeddings: bool = False,
    extra: Sequence[str] = (),
    log_path: Path | None = None,
) -> EngineProcess:
    """``llama-server -m MODEL --alias tiny --parallel N --metrics -c CTX -t THREADS``.

    ``context`` is the whole KV cache: each slot gets ``context / parallel``. ``embeddings``
    adds ``--embeddings`` (completions are still served); ``extra`` any other flags. Raises
    :class:`~bench.llamacpp.paths.NotBuiltError` when the binary is not built.
    """
    port = port or free_port()
    argv = [str(server_binary()), "-m", str(model), "--alias", ALIAS, "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--parallel", str(parallel), "--metrics"]
    argv += ["-c", str(context), "-t", str(threads)]
    if embeddings:
        argv += ["--embeddings"]
    argv += extra
    return EngineProcess("llama-server", argv, port, "/health", log_path=log_path)


def python_server(
    model: Path,
    *,
    port: int | None = None,
    context: int = 4096,
    embeddings: bool = False,
    log_path: Path | None = None,
) -> EngineProcess:
    """``python -m llama_cpp.server`` on the same build's libraries, one model, alias tiny.

    ``embeddings`` adds ``--embedding true`` (it still generates; the vectors are pooled as the
    model declares).
    """
    port = port or free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(python_package_dir()), env.get("PYTHONPATH", "")) if p
    )
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(model)]
    argv += ["--model_alias", ALIAS, "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--n_ctx", str(context), "--n_threads", "1", "--verbose", "false"]
    if embeddings:
        argv += ["--embedding", "true"]
    return EngineProcess(
        "llama-cpp-python server", argv, port, "/v1/models", env=env, log_path=log_path
    )
