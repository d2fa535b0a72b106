"""``python -m node_agent.gpu_check``: the agent's NVML reading next to ``nvidia-smi``'s.

For an operator on a GPU box: it reads the GPUs as the agent does (:class:`NvmlGpus`), asks
``nvidia-smi`` before and after, and prints both with a verdict (exit status 1 on a mismatch).
The agent counts the memory the driver reserves as used (no model can have it), so its used is
``nvidia-smi``'s used + reserved, and its free (total - used) is ``nvidia-smi``'s free.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from dataclasses import asdict, dataclass

from node_agent.gpu import NvmlGpus
from node_protocol.wire import GpuReport

QUERY = "index,name,memory.total,memory.used,memory.free,memory.reserved"
MIB = 2**20
SLACK_MIB = 2.0  # readings taken a moment apart, rounded to MiB by nvidia-smi


@dataclass(frozen=True, slots=True)
class SmiRow:
    index: int
    name: str
    total_mib: float
    used_mib: float
    free_mib: float
    reserved_mib: float


def parse_smi(text: str) -> list[SmiRow]:
    """``nvidia-smi --query-gpu=QUERY --format=csv,noheader,nounits`` output."""
    rows = []
    for line in text.strip().splitlines():
        index, name, total, used, free, reserved = (p.strip() for p in line.split(","))
        rows.append(
            SmiRow(int(index), name, float(total), float(used), float(free), float(reserved))
        )
    return rows


def compare(ours: GpuReport, seen: list[SmiRow]) -> dict[str, object]:
    """One GPU: the agent's reading against nvidia-smi's (read before and after it)."""
    total = ours.memory_total_bytes / MIB
    used = ours.memory_used_bytes / MIB
    used_smi = [s.used_mib + s.reserved_mib for s in seen]
    free_smi = [s.free_mib for s in seen]
    checks = {
        "name": all(s.name == ours.name for s in seen),
        "total": all(abs(s.total_mib - total) <= SLACK_MIB for s in seen),
        "used": min(used_smi) - SLACK_MIB <= used <= max(used_smi) + SLACK_MIB,
        "free": min(free_smi) - SLACK_MIB <= total - used <= max(free_smi) + SLACK_MIB,
    }
    return {
        "index": ours.index,
        "agent": {
            "name": ours.name,
            "total_mib": total,
            "used_mib": used,
            "free_mib": total - used,
        },
        "nvidia_smi": [asdict(s) for s in seen],
        "checks": checks,
        "pass": all(checks.values()),
    }


def _smi() -> list[SmiRow]:
    command = ["nvidia-smi", f"--query-gpu={QUERY}", "--format=csv,noheader,nounits"]
    return parse_smi(subprocess.run(command, capture_output=True, text=True, check=True).stdout)


async def _check() -> int:
    gpus = await NvmlGpus.open()
    if gpus is None:
        print("NVML did not initialise: no NVIDIA driver here", file=sys.stderr)
        return 2
    before = await asyncio.to_thread(_smi)
    ours = await gpus.read()
    after = await asyncio.to_thread(_smi)
    await gpus.close()
    rows = [compare(g, [b, a]) for g, b, a in zip(ours, before, after, strict=False)]
    ok = len(ours) == len(before) and all(r["pass"] for r in rows)
    print(json.dumps({"gpus": len(ours), "nvidia_smi_gpus": len(before), "rows": rows, "pass": ok}))
    return 0 if ok else 1


def main() -> None:
    raise SystemExit(asyncio.run(_check()))


if __name__ == "__main__":
    main()
