"""Emulated LLM backends (Ollama, vLLM, TGI, Triton and LM Studio faces on one simulated GPU
box) that run on a CPU with real token timing."""

from .app import RunningEmulator, make_app, serve
from .config import EmulatorConfig

__all__ = ["EmulatorConfig", "RunningEmulator", "make_app", "serve"]
