"""Small inline SVG charts (no plotting library, nothing fetched): empirical CDFs, lines over
time with a shaded window, and horizontal bars. Each function returns one ``<svg>`` element."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

import numpy as np

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
WIDTH, HEIGHT = 640, 300
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 48, 46


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering ``[low, high]``."""
    if not math.isfinite(low) or not math.isfinite(high) or high <= low:
        high = low + 1.0
    raw = (high - low) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(low / step) * step
    ticks = [round(first, 10)]
    while ticks[-1] < high - step * 1e-9:
        ticks.append(round(first + len(ticks) * step, 10))
    return ticks


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


class _Frame:
    """Maps data to pixels inside the plot area and draws the axes."""

    def __init__(self, xs: tuple[float, float], ys: tuple[float, float]) -> None:
        self.xt, self.yt = nice_ticks(*xs), nice_ticks(*ys)
        self.x0, self.x1 = self.xt[0], self.xt[-1]
        self.y0, self.y1 = self.yt[0], self.yt[-1]

    def x(self, v: float) -> float:
        return LEFT + (v - self.x0) / ((self.x1 - self.x0) or 1) * (WIDTH - LEFT - RIGHT)

    def y(self, v: float) -> float:
        return (
            HEIGHT - BOTTOM - (v - self.y0) / ((self.y1 - self.y0) or 1) * (HEIGHT - TOP - BOTTOM)
        )

    def axes(self, title: str, xlabel: str, ylabel: str) -> list[str]:
        out = [
            f'<text x="{WIDTH / 2}" y="20" text-anchor="middle" class="t">{escape(title)}</text>'
        ]
        for t in self.xt:
            out.append(
                f'<line x1="{self.x(t):.1f}" x2="{self.x(t):.1f}" y1="{TOP}" '
                f'y2="{HEIGHT - BOTTOM}" class="g"/>'
            )
            out.append(
                f'<text x="{self.x(t):.1f}" y="{HEIGHT - BOTTOM + 16}" '
                f'text-anchor="middle">{_fmt(t)}</text>'
            )
        for t in self.yt:
            out.append(
                f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{self.y(t):.1f}" '
                f'y2="{self.y(t):.1f}" class="g"/>'
            )
            out.append(
                f'<text x="{LEFT - 6}" y="{self.y(t) + 4:.1f}" text-anchor="end">{_fmt(t)}</text>'
            )
        out.append(
            f'<text x="{WIDTH / 2}" y="{HEIGHT - 8}" text-anchor="middle">{escape(xlabel)}</text>'
        )
        out.append(
            f'<text x="14" y="{HEIGHT / 2}" text-anchor="middle" '
            f'transform="rotate(-90 14 {HEIGHT / 2})">{escape(ylabel)}</text>'
        )
        return out


def _svg(parts: list[str], label: str, height: int = HEIGHT) -> str:
    style = (
        "<style>text{font:11px sans-serif;fill:#333}.t{font-size:13px;font-weight:bold}"
        ".g{stroke:#e5e5e5}</style>"
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" '
        f'width="{WIDTH}" height="{height}" role="img" aria-label="{escape(label)}">'
        + style
        + "".join(parts)
        + "</svg>"
    )


def _legend(names: Sequence[str]) -> list[str]:
    """One row of coloured keys between the title and the plot."""
    out, x = [], float(LEFT)
    for i, name in enumerate(names):
        color = PALETTE[i % len(PALETTE)]
        out.append(f'<rect x="{x:.0f}" y="28" width="10" height="10" fill="{color}"/>')
        out.append(f'<text x="{x + 14:.0f}" y="37">{escape(name)}</text>')
        x += 30 + 6.5 * len(name)
    return out


def _empty(title: str) -> str:
    return _svg(
        [
            f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">'
            f"{escape(title)}: no data</text>"
        ],
        title,
    )


def cdf_chart(series: Mapping[str, Sequence[float]], title: str, xlabel: str) -> str:
    """One empirical CDF line per series (x clipped at the 99.5th percentile of all)."""
    data = {k: np.sort(np.asarray(v, dtype=float)) for k, v in series.items() if len(v)}
    if not data:
        return _empty(title)
    joined = np.concatenate(list(data.values()))
    frame = _Frame((float(joined.min()), float(np.percentile(joined, 99.5))), (0.0, 1.0))
    parts = frame.axes(title, xlabel, "fraction of requests")
    for i, values in enumerate(data.values()):
        ys = np.arange(1, values.size + 1) / values.size
        keep = np.unique(
            np.r_[np.arange(0, values.size, max(1, values.size // 400)), -1 % values.size]
        )
        pts = " ".join(
            f"{frame.x(min(x, frame.x1)):.1f},{frame.y(y):.1f}"
            for x, y in zip(values[keep], ys[keep], strict=True)
        )
        parts.append(
            f'<polyline fill="none" stroke="{PALETTE[i % len(PALETTE)]}" '
            f'stroke-width="1.8" points="{pts}"/>'
        )
    return _svg(parts + _legend(list(data)), title)


def line_chart(
    series: Mapping[str, Sequence[float]],
    title: str,
    ylabel: str,
    step_s: float = 1.0,
    shade: tuple[float, float] | None = None,
) -> str:
    """Lines over time (x = seconds from the start); ``shade`` marks the steady window."""
    data = {k: list(v) for k, v in series.items() if len(v)}
    if not data:
        return _empty(title)
    length = max(len(v) for v in data.values()) * step_s
    top = max(max(v) for v in data.values())
    frame = _Frame((0.0, length), (0.0, top * 1.05 or 1.0))
    parts = []
    if shade is not None:
        a, b = frame.x(max(0.0, shade[0])), frame.x(min(frame.x1, shade[1]))
        parts.append(
            f'<rect x="{a:.1f}" y="{TOP}" width="{max(0.0, b - a):.1f}" '
            f'height="{HEIGHT - TOP - BOTTOM}" fill="#f2f7ff"/>'
        )
    parts += frame.axes(title, "seconds from start (shaded: steady window)", ylabel)
    for i, values in enumerate(data.values()):
        pts = " ".join(f"{frame.x(j * step_s):.1f},{frame.y(v):.1f}" for j, v in enumerate(values))
        parts.append(
            f'<polyline fill="none" stroke="{PALETTE[i % len(PALETTE)]}" '
            f'stroke-width="1.6" points="{pts}"/>'
        )
    return _svg(parts + _legend(list(data)), title)


def bar_chart(values: Mapping[str, float], title: str, unit: str = "%") -> str:
    """Horizontal bars, one per key, labelled with their value."""
    if not values:
        return _empty(title)
    top = max(values.values()) or 1.0
    row = min(28.0, (HEIGHT - TOP - 20) / len(values))
    parts = [f'<text x="{WIDTH / 2}" y="20" text-anchor="middle" class="t">{escape(title)}</text>']
    span = WIDTH - 200 - RIGHT - 60
    for i, (name, value) in enumerate(values.items()):
        y = TOP + i * row
        parts.append(
            f'<text x="192" y="{y + row / 2 + 4:.1f}" text-anchor="end">{escape(name)}</text>'
        )
        parts.append(
            f'<rect x="200" y="{y + 3:.1f}" width="{span * value / top:.1f}" '
            f'height="{row - 6:.1f}" fill="{PALETTE[i % len(PALETTE)]}"/>'
        )
        parts.append(
            f'<text x="{204 + span * value / top:.1f}" y="{y + row / 2 + 4:.1f}">'
            f"{_fmt(value)}{escape(unit)}</text>"
        )
    return _svg(parts, title, height=int(TOP + len(values) * row + 12))
