"""The typed keys under which the agent's long-lived resources live on its application."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from .backends.base import Backend
from .gate import BackendGate
from .gpu import GpuSource
from .metrics import AgentMetrics
from .prompt_caches import PromptCaches
from .proxy import BackendProxy
from .reporter import Reporter
from .router_directory import Resolver
from .settings import AgentSettings
from .traffic import TrafficStats

SETTINGS = web.AppKey("settings", AgentSettings)
STATS = web.AppKey("stats", TrafficStats)
METRICS = web.AppKey("metrics", AgentMetrics)
CONTROL_SESSION = web.AppKey("control_session", aiohttp.ClientSession)
PROXY = web.AppKey("proxy", BackendProxy)
PROMPTS = web.AppKey("prompts", PromptCaches)
BACKEND = web.AppKey("backend", Backend)
GATE = web.AppKey("gate", BackendGate)
GPUS = web.AppKey("gpus", GpuSource)
REPORTER = web.AppKey("reporter", Reporter)
RESOLVER: web.AppKey[Resolver] = web.AppKey("resolver")
