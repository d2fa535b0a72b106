"""What llama-server says about itself: ``/props``, ``/v1/models`` and the sampling settings.

The settings are llama-server's defaults as it prints them (float32 values widened to double);
a task's copy carries its own ``n_predict`` and ``stream``. ``full`` adds the keys the native
``/completion`` answer lists that ``/props`` and ``/slots`` leave out.
"""

from __future__ import annotations

import secrets
import string
import time
from typing import Any

from .capacity import ModelSpec
from .catalog import facts
from .llamacpp_prompt import BOS, CHAT_TEMPLATE, EOS, N_VOCAB

FTYPE = "Q4_K_M"
N_EMBD = 4096
MODEL_DIR = "/models"
SAMPLERS = (
    "penalties", "dry", "top_n_sigma", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature",
)  # fmt: skip


# llama-server's sampling defaults, in the order it lists them.
SAMPLING: dict[str, Any] = {
    "seed": 4294967295,
    "temperature": 0.800000011920929,
    "dynatemp_range": 0.0,
    "dynatemp_exponent": 1.0,
    "top_k": 40,
    "top_p": 0.949999988079071,
    "min_p": 0.05000000074505806,
    "top_n_sigma": -1.0,
    "xtc_probability": 0.0,
    "xtc_threshold": 0.10000000149011612,
    "typical_p": 1.0,
    "repeat_last_n": 64,
    "repeat_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "dry_multiplier": 0.0,
    "dry_base": 1.75,
    "dry_allowed_length": 2,
    "dry_penalty_last_n": 64,
}
MIROSTAT: dict[str, Any] = {
    "mirostat": 0,
    "mirostat_tau": 5.0,
    "mirostat_eta": 0.10000000149011612,
    "adaptive_target": -1.0,
    "adaptive_decay": 0.8999999761581421,
}
GRAMMAR: dict[str, Any] = {
    "grammar": "",
    "grammar_lazy": False,
    "grammar_triggers": [],
    "preserved_tokens": [],
}


def generation_settings(n_predict: int, stream: bool, full: bool = False) -> dict[str, Any]:
    """The sampling settings of a task (``/props``, ``/slots``, native ``/completion``)."""
    out = dict(SAMPLING)
    if full:
        out["dry_sequence_breakers"] = ["\n", ":", '"', "*"]
    out |= MIROSTAT
    if full:
        out["stop"] = []
    out |= {
        "max_tokens": n_predict,
        "n_predict": n_predict,
        "n_keep": 0,
        "n_discard": 0,
        "ignore_eos": False,
        "stream": stream,
    }
    if full:
        out["logit_bias"] = []
    out |= {"n_probs": 0, "min_keep": 0}
    if full:
        out |= GRAMMAR
    return out | {
        "chat_format": "Content-only",
        "reasoning_format": "deepseek" if full else "none",
        "reasoning_in_content": False,
        "generation_prompt": "",
        "samplers": list(SAMPLERS),
        "speculative.types": "none",
        "timings_per_token": False,
        "post_sampling_probs": False,
        "backend_sampling": False,
        "lora": [],
    }


def model_path(name: str) -> str:
    return f"{MODEL_DIR}/{name.replace('/', '_').replace(':', '-')}.gguf"


def media_marker() -> str:
    """A per-process marker for media in prompts, as llama-server draws one at start."""
    alphabet = string.ascii_letters + string.digits
    return "<__media_" + "".join(secrets.choice(alphabet) for _ in range(32)) + "__>"


def props(
    spec: ModelSpec, slots: int, n_ctx_slot: int, build_info: str, marker: str
) -> dict[str, Any]:
    return {
        "default_generation_settings": {
            "params": generation_settings(-1, False),
            "n_ctx": n_ctx_slot,
        },
        "total_slots": slots,
        "model_alias": spec.name,
        "model_ftype": FTYPE,
        "model_path": model_path(spec.name),
        "modalities": {"vision": False, "video": False, "audio": False},
        "media_marker": marker,
        "endpoint_slots": True,
        "endpoint_props": False,
        "endpoint_metrics": True,
        "ui": True,
        "ui_settings": {},
        "chat_template": CHAT_TEMPLATE,
        "chat_template_caps": {
            "supports_object_arguments": False,
            "supports_parallel_tool_calls": False,
            "supports_preserve_reasoning": False,
            "supports_reasoning_effort": False,
            "supports_string_content": True,
            "supports_system_role": True,
            "supports_tool_calls": False,
            "supports_tools": False,
            "supports_typed_content": False,
        },
        "bos_token": BOS,
        "eos_token": EOS,
        "build_info": build_info,
        "is_sleeping": False,
        "cors_proxy_enabled": False,
    }


def models(spec: ModelSpec, n_ctx_slot: int, n_ctx_train: int) -> dict[str, Any]:
    """``/v1/models``: an Ollama-style ``models`` list and the OpenAI ``data`` list."""
    model = facts(spec)
    params = int((model.params_b or 7.0) * 1e9)
    ollama_card = {
        "name": spec.name,
        "model": spec.name,
        "modified_at": "",
        "size": "",
        "digest": "",
        "type": "model",
        "description": "",
        "tags": [""],
        "capabilities": ["completion"],
        "parameters": "",
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": "",
            "families": [""],
            "parameter_size": "",
            "quantization_level": "",
        },
    }
    card = {
        "id": spec.name,
        "aliases": [spec.name],
        "tags": [],
        "object": "model",
        "created": int(time.time()),
        "owned_by": "llamacpp",
        "meta": {
            "vocab_type": 1,
            "n_vocab": N_VOCAB,
            "n_ctx": n_ctx_slot,
            "n_ctx_train": n_ctx_train,
            "n_embd": N_EMBD,
            "n_params": params,
            "size": model.disk_bytes,
            "ftype": FTYPE,
        },
    }
    return {"models": [ollama_card], "object": "list", "data": [card]}
