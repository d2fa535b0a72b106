"""The NVML-vs-nvidia-smi check's verdicts, on readings taken on an H100 (device run)."""

from __future__ import annotations

from node_agent.gpu_check import compare, parse_smi
from node_protocol.wire import GpuReport

# nvidia-smi --query-gpu=index,name,memory.total,memory.used,memory.free,memory.reserved
SMI = "0, NVIDIA H100 80GB HBM3, 81559, 6671, 74409, 480\n"
MIB = 2**20


def _ours(used_mib: float) -> GpuReport:
    return GpuReport(
        index=0,
        name="NVIDIA H100 80GB HBM3",
        memory_total_bytes=81559 * MIB,
        memory_used_bytes=int(used_mib * MIB),
        utilization_pct=0.0,
    )


def test_reserved_memory_counts_as_used_and_free_matches() -> None:
    """The agent read 7150.8 MiB used while nvidia-smi said 6671 used + 480 reserved: a pass."""
    seen = parse_smi(SMI)
    assert seen[0].reserved_mib == 480
    verdict = compare(_ours(7150.8), seen * 2)
    assert verdict["checks"] == {"name": True, "total": True, "used": True, "free": True}
    assert verdict["pass"] is True


def test_a_reading_without_the_reserved_memory_fails() -> None:
    """Used memory without the driver's reservation overstates free memory: a mismatch."""
    verdict = compare(_ours(6671.0), parse_smi(SMI) * 2)
    assert verdict["pass"] is False
    checks = verdict["checks"]
    assert isinstance(checks, dict)
    assert checks["used"] is False
    assert checks["free"] is False
