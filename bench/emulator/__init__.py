"""Emulated LLM backends (vLLM and Ollama faces) that run on a CPU with real token timing."""

from .app import RunningEmulator, make_app, serve
from .config import EmulatorConfig

__all__ = ["EmulatorConfig", "RunningEmulator", "make_app", "serve"]
