"""Where ``bench/llamacpp/build.sh`` puts llama.cpp's build: one folder per version.

The same rules as the script: ``LLAMA_SERVER_CACHE`` else ``$XDG_CACHE_HOME`` (else
``~/.cache``) ``/inference-router/llama-cpp``, then the version (``LLAMA_CPP_PYTHON_VERSION``,
else the one in ``bench/llamacpp/VERSION``). ``bin/`` holds ``llama-server`` and the shared
libraries, ``python/`` llama-cpp-python's pure-Python package wired to those libraries.
"""

from __future__ import annotations

import os
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build.sh"


class NotBuiltError(RuntimeError):
    """The llama.cpp build is missing from the cache."""


def version() -> str:
    return os.environ.get("LLAMA_CPP_PYTHON_VERSION") or (HERE / "VERSION").read_text().strip()


def cache_root() -> Path:
    explicit = os.environ.get("LLAMA_SERVER_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "inference-router" / "llama-cpp"


def install_dir() -> Path:
    return cache_root() / version()


def server_binary() -> Path:
    """``llama-server``, or :class:`NotBuiltError` saying how to build it."""
    path = install_dir() / "bin" / "llama-server"
    if not os.access(path, os.X_OK):
        raise NotBuiltError(f"{path} is missing: run `make llama-cpp` (bench/llamacpp/build.sh)")
    return path


def python_package_dir() -> Path:
    """The folder to put on ``PYTHONPATH`` for ``python -m llama_cpp.server``."""
    path = install_dir() / "python"
    if not (path / "llama_cpp" / "lib").is_dir():
        raise NotBuiltError(f"{path} is incomplete: run `make llama-cpp` (bench/llamacpp/build.sh)")
    return path
