"""What the simulated nodes' agents send: the fleet's truth as the router's load reports.

Each engine (one model on one box) is one node to the routers, named ``e<engine id>``. Its report
(:class:`node_protocol.wire.LoadReport`) carries the engine's requests (in flight, and running),
its output rate, its model (loaded or not, its VRAM need, its parallel slots, and a size from
which the router's load-time estimate is the engine's own load time) and the box's GPU memory,
so the router itself decides whether the model fits free VRAM, fits only by evicting another
model, or cannot fit. A model still loading is reported as not loaded (its VRAM already taken).

:func:`snapshot` takes the numbers when the agents send them; each router replica reads them
into reports of its own (:class:`Reader`), as it would parse each body it receives. A report
that says what the node's last one said is the very same object again, so the router sees at
once that only its time moved.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from bench.sim.nodes import LOADED, UNLOADED, Fleet
from node_protocol.wire import GpuReport, LoadReport, ModelReport
from router.scoring import DEFAULT_PARAMS, ScoringParams

GIB = 2**30


class Snapshot(NamedTuple):
    """What the agents of model ``mi``'s engines at ``rows`` (positions among its engines)
    sent: their requests in flight and running, and every engine's residency (``states``, per
    model: the boxes' used VRAM follows from them)."""

    mi: int
    rows: npt.NDArray[np.intp]
    in_flight: list[int]
    running: list[int]
    states: list[npt.NDArray[np.float64]]


def engine_name(eid: int) -> str:
    return f"e{eid}"


def size_for(load_s: float, p: ScoringParams = DEFAULT_PARAMS) -> int:
    """The model size whose load time the router estimates (:func:`router.scoring.load_time_s`)
    as ``load_s``."""
    return round((load_s - p.load_base_s) * p.load_bytes_per_s)


def snapshot(fleet: Fleet, mi: int, rows: npt.NDArray[np.intp]) -> Snapshot:
    """What the agents of model ``mi``'s engines at ``rows`` send now."""
    return Snapshot(
        mi,
        rows,
        fleet.load[mi][rows].astype(int).tolist(),
        fleet.running[mi][rows].astype(int).tolist(),
        [state.copy() for state in fleet.state],
    )


class Reader:
    """One replica's reading of the reports of one model's engines (see the module doc)."""

    def __init__(self, fleet: Fleet, mi: int) -> None:
        self._fleet, self._eids = fleet, fleet.by_model[mi]
        self._last: dict[int, tuple[tuple[int, int, bool, int], LoadReport]] = {}
        self._models: dict[tuple[int, bool], ModelReport] = {}
        self._gpus: dict[tuple[int, int], GpuReport] = {}
        # Every model's engines: their boxes and VRAM needs, to add up each box's used VRAM.
        self._boxes = [np.array([fleet.engines[e].spec.node for e in eids], dtype=np.intp)
                       for eids in fleet.by_model]  # fmt: skip
        self._vram = [np.array([round(fleet.engines[e].spec.vram_gb * GIB) for e in eids],
                               dtype=np.int64) for eids in fleet.by_model]  # fmt: skip

    def _used(self, states: list[npt.NDArray[np.float64]]) -> npt.NDArray[np.int64]:
        """Each box's used VRAM, from every engine's residency."""
        used = np.zeros(len(self._fleet.nodes), dtype=np.int64)
        for boxes, vram, state in zip(self._boxes, self._vram, states, strict=True):
            np.add.at(used, boxes, np.where(state != UNLOADED, vram, 0))
        return used

    def reports(self, snap: Snapshot) -> list[tuple[int, LoadReport]]:
        """(row, report) for each engine in ``snap``."""
        out = []
        rows = snap.rows
        loaded = (snap.states[snap.mi][rows] == LOADED).tolist()
        used = self._used(snap.states)[self._boxes[snap.mi][rows]].tolist()
        for i, row in enumerate(rows.tolist()):
            said = (snap.in_flight[i], snap.running[i], loaded[i], used[i])
            last = self._last.get(row)
            if last is None or last[0] != said:
                last = self._last[row] = (said, self._report(row, *said))
            out.append((row, last[1]))
        return out

    def _report(
        self, row: int, in_flight: int, running: int, loaded: bool, used: int
    ) -> LoadReport:
        eid = self._eids[row]
        spec = self._fleet.engines[eid].spec
        model = self._models.get((eid, loaded))
        if model is None:
            model = self._models[eid, loaded] = ModelReport(
                id=spec.model,
                loaded=loaded,
                vram_bytes=round(spec.vram_gb * GIB),
                size_bytes=size_for(spec.load_s),
                max_parallel=spec.slots,
            )
        gpu = self._gpus.get((spec.node, used))
        if gpu is None:
            box = self._fleet.nodes[spec.node]
            gpu = self._gpus[spec.node, used] = GpuReport(
                0, box.gpu, round(box.vram_gb * GIB), used
            )
        rate = running * spec.tok_s / (1.0 + spec.batch_decay * max(running - 1.0, 0.0))
        return LoadReport(
            seq=0,
            sent_at=0.0,
            backend_kind="ollama",
            backend_health="ok",
            in_flight=in_flight,
            models=(model,),
            gpus=(gpu,),
            queue_running=running,
            output_tokens_per_s=rate,
        )
