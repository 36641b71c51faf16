"""Charts drawn on the server as SVG (no charting code in the browser): bars for a month's
usage, and a step line for an endpoint's size over time. Every text is escaped by the
templates' autoescape; numbers are formatted here."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime

from markupsafe import Markup, escape

WIDTH, HEIGHT, PAD = 560, 180, 36


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    text: str  # the value as shown, with its unit


def bars(items: list[Bar], *, title: str) -> Markup:
    """Horizontal bars, each scaled to the largest (values of different units are shown
    side by side by their share of that largest, with the figure written beside)."""
    height = PAD + 28 * len(items)
    top = max((b.value for b in items), default=0.0) or 1.0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{WIDTH}" '
        f'height="{height}" viewBox="0 0 {WIDTH} {height}"><title>{escape(title)}</title>'
    ]
    for i, bar in enumerate(items):
        y = 12 + 28 * i
        width = max(2.0, (WIDTH - 260) * bar.value / top) if bar.value > 0 else 0.0
        parts.append(
            f'<text x="0" y="{y + 14}" class="label">{escape(bar.label)}</text>'
            f'<rect x="150" y="{y}" width="{width:.1f}" height="18" class="bar"/>'
            f'<text x="{150 + width + 6:.1f}" y="{y + 14}" class="value">{escape(bar.text)}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every text above is escaped


def steps(points: list[tuple[datetime, float]], *, until: datetime, title: str) -> Markup:
    """A step line of a value over time (each point holds until the next)."""
    if not points:
        return Markup("")
    start = points[0][0]
    span = max((until - start).total_seconds(), 1.0)
    top = max(v for _, v in points) or 1.0

    def x(t: datetime) -> float:
        return PAD + (WIDTH - 2 * PAD) * (t - start).total_seconds() / span

    def y(v: float) -> float:
        return HEIGHT - PAD - (HEIGHT - 2 * PAD) * v / top

    path = [f"M{x(start):.1f},{y(points[0][1]):.1f}"]
    for (_, v0), (t1, v1) in itertools.pairwise(points):
        path.append(f"L{x(t1):.1f},{y(v0):.1f}L{x(t1):.1f},{y(v1):.1f}")
    path.append(f"L{x(until):.1f},{y(points[-1][1]):.1f}")
    return Markup(  # noqa: S704 - numbers and escaped text only
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{WIDTH}" '
        f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}"><title>{escape(title)}</title>'
        f'<path d="{"".join(path)}" class="line" fill="none"/>'
        f'<text x="0" y="{y(top) + 4:.1f}" class="label">{top:g}</text>'
        f'<text x="0" y="{HEIGHT - PAD + 4}" class="label">0</text>'
        f'<text x="{PAD}" y="{HEIGHT - 8}" class="label">{start:%H:%M:%S}</text>'
        f'<text x="{WIDTH - PAD - 50}" y="{HEIGHT - 8}" class="label">now</text></svg>'
    )


def human_bytes(value: float | None) -> str:
    if value is None:
        return "—"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
