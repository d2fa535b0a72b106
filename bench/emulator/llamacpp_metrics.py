"""llama-server's ``/metrics``: its ``llamacpp:`` series, counted as llama-server counts them.

Reused prompt tokens count when a request takes its slot (``prompt_tokens_cached_total``),
computed ones when the prompt has been read, at the first token (``prompt_tokens_total``).
Generated tokens count when the request ends. The two throughput gauges cover the time since
the previous scrape (a scrape starts a new window) and count decode steps, not tokens: the first
generated token comes with the prompt. ``n_busy_slots_per_decode`` is the mean batch size.
Values are written as C++ streams write doubles (six significant digits), HELP and TYPE before
each.
"""

from __future__ import annotations

from dataclasses import dataclass

from .job import Job

COUNTERS = (
    ("prompt_tokens_total", "Number of prompt tokens processed, excluding cached tokens"),
    ("prompt_tokens_cached_total", "Number of prompt tokens reused from the cache"),
    ("prompt_seconds_total", "Total time spent processing prompts"),
    ("tokens_predicted_total", "Number of generation tokens processed"),
    ("tokens_predicted_seconds_total", "Total time spent generating tokens"),
    (
        "n_decode_total",
        "Total number of llama_decode() calls, excluding speculative decoding and multimodal "
        "decoding",
    ),
    ("n_tokens_max", "Largest observed sequence length (prompt + generation)"),
    ("spec_decode_num_draft_tokens_total", "Speculative: Total draft tokens generated"),
    (
        "spec_decode_num_accepted_tokens_total",
        "Speculative: Total draft tokens accepted by the target model",
    ),
    ("spec_decode_num_drafts_total", "Speculative: Total speculative decoding verification steps"),
)
GAUGES = (
    ("prompt_tokens_seconds", "Average prompt throughput in tokens/s"),
    ("predicted_tokens_seconds", "Average generation throughput in tokens/s"),
    ("requests_processing", "Number of requests processing"),
    ("requests_deferred", "Number of requests deferred"),
    ("n_busy_slots_per_decode", "Average number of busy slots per llama_decode() call"),
)
CONTENT_TYPE = "text/plain; version=0.0.4"


@dataclass(slots=True)
class Throughput:
    """Tokens, the decode steps they took and the seconds spent on them."""

    tokens: int = 0
    steps: int = 0
    seconds: float = 0.0

    def add(self, tokens: int, steps: int, seconds: float) -> None:
        self.tokens += tokens
        self.steps += steps
        self.seconds += max(0.0, seconds)

    def per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else 0.0


def prompt_us(job: Job) -> int:
    """Whole µs from taking the slot to the end of the prompt (the first token, or the end of
    a job that generates nothing), as llama-server times it."""
    read_at = job.first_token_at or job.ended_at
    if job.slot_at is None or read_at is None:
        return 0
    return round((read_at - job.slot_at) * 1e6)


def generation_us(job: Job) -> int:
    """Whole µs from the first token to the last (at least one once a token is out)."""
    if job.first_token_at is None or job.last_token_at is None:
        return 0
    return max(1, round((job.last_token_at - job.first_token_at) * 1e6))


def cpp_double(value: float) -> str:
    """A double as ``std::ostream`` writes it by default (``%g``, six significant digits)."""
    return f"{float(value):g}"


class LlamaStats:
    """The server-wide counters behind ``/metrics``."""

    def __init__(self) -> None:
        self.prompt = Throughput()
        self.prompt_window = Throughput()
        self.predicted = Throughput()
        self.predicted_window = Throughput()
        self.prompt_cached = 0
        self.decodes = 0.0
        self.busy_slot_decodes = 0.0
        self.tokens_max = 0

    def slot_taken(self, job: Job) -> None:
        """``job`` starts in a slot, reusing ``job.cached_tokens`` of its prompt."""
        self.prompt_cached += job.cached_tokens

    def prompt_read(self, job: Job, busy_slots: int) -> None:
        """The prompt of ``job`` has been read: its first token is out."""
        computed = job.prompt_tokens - job.cached_tokens
        seconds = prompt_us(job) / 1e6
        self.prompt.add(computed, computed, seconds)
        self.prompt_window.add(computed, computed, seconds)
        self.decodes += 1
        self.busy_slot_decodes += busy_slots

    def finished(self, job: Job) -> None:
        """``job`` left its slot: count what it generated."""
        seconds, steps = generation_us(job) / 1e6, max(0, job.generated - 1)
        self.predicted.add(job.generated, steps, seconds)
        self.predicted_window.add(job.generated, steps, seconds)
        self.decodes += job.decode_steps
        self.busy_slot_decodes += job.generated
        self.tokens_max = max(self.tokens_max, job.prompt_tokens + job.generated - 1)

    def render(self, processing: int, deferred: int) -> bytes:
        """The exposition text; starts a new window for the throughput gauges."""
        counters = (
            self.prompt.tokens,
            self.prompt_cached,
            self.prompt.seconds,
            self.predicted.tokens,
            self.predicted.seconds,
            round(self.decodes),
            self.tokens_max,
            0,
            0,
            0,
        )
        gauges = (
            self.prompt_window.per_second(),
            self.predicted_window.per_second(),
            processing,
            deferred,
            self.busy_slot_decodes / max(self.decodes, 1.0),
        )
        lines: list[str] = []
        for kind, names, values in (("counter", COUNTERS, counters), ("gauge", GAUGES, gauges)):
            for (name, text), value in zip(names, values, strict=True):
                lines += (
                    f"# HELP llamacpp:{name} {text}",
                    f"# TYPE llamacpp:{name} {kind}",
                    f"llamacpp:{name} {cpp_double(value)}",
                )
        self.prompt_window, self.predicted_window = Throughput(), Throughput()
        return ("\n".join(lines) + "\n").encode()
