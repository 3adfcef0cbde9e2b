"""Inline SVG for the sweep summary's two charts: a few primitives, written by hand so that a sweep's driver
never imports matplotlib (most of a second, after the runs, when a sweep is otherwise done in seconds) and the
charts stay sharp at any zoom. Every label is escaped; sizes are in CSS pixels.

>>> svg(300, 200, "heatmap of sharpe", [rect(0, 0, 10, 10, "#ffffbf")])  # '<svg ...><title>...</title>...</svg>'
"""
from __future__ import annotations

import html
import math

# ColorBrewer's RdYlGn, the 11 colours of matplotlib's "RdYlGn" map (red, low, to green, high), interpolated
# linearly between them as matplotlib's map is.
RDYLGN = ("#a50026", "#d73027", "#f46d43", "#fdae61", "#fee08b", "#ffffbf", "#d9ef8b", "#a6d96a", "#66bd63",
          "#1a9850", "#006837")
MISSING = "#dddddd"
FONT = "font-family:system-ui,sans-serif"


def colour(fraction: float, stops: tuple[str, ...] = RDYLGN) -> str:
    """The colour at ``fraction`` (0 to 1, clipped) along ``stops``, linearly interpolated in RGB.

    >>> colour(0.0), colour(0.5), colour(1.0)  # ('#a50026', '#ffffbf', '#006837')
    """
    fraction = min(max(float(fraction), 0.0), 1.0)
    position = fraction * (len(stops) - 1)
    low = min(int(position), len(stops) - 2)
    weight = position - low
    first, second = (tuple(int(stop[i:i + 2], 16) for i in (1, 3, 5)) for stop in stops[low:low + 2])
    return "#" + "".join(f"{round(a + (b - a) * weight):02x}" for a, b in zip(first, second))


def dark(hex_colour: str) -> bool:
    """Whether white text reads better than black on ``hex_colour`` (its relative luminance below 0.4)."""
    red, green, blue = (int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5))
    return 0.2126 * red + 0.7152 * green + 0.0722 * blue < 0.4


def ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (steps of 1, 2 or 5 times a power of ten) covering [low, high].

    >>> ticks(-0.3, 2.4)  # [0.0, 0.5, 1.0, 1.5, 2.0]
    """
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low] if math.isfinite(low) else []
    raw = (high - low) / max(count, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(multiple * power for multiple in (1, 2, 5, 10) if multiple * power >= raw)
    first = math.ceil(low / step - 1e-9)
    return [round(index * step, 12) + 0.0 for index in range(first, math.floor(high / step + 1e-9) + 1)]


def text(x: float, y: float, content: object, size: float = 12, anchor: str = "middle", fill: str = "#222",
         rotate: float = 0, weight: str = "normal") -> str:
    turn = f' transform="rotate({rotate:g} {x:.1f} {y:.1f})"' if rotate else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size:g}" text-anchor="{anchor}" fill="{fill}" '
            f'font-weight="{weight}" dominant-baseline="middle"{turn}>{html.escape(str(content))}</text>')


def rect(x: float, y: float, width: float, height: float, fill: str, extra: str = "") -> str:
    return f'<rect x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{height:.1f}" fill="{fill}"{extra}/>'


def line(x1: float, y1: float, x2: float, y2: float, stroke: str = "#999", extra: str = "") -> str:
    return f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{stroke}"{extra}/>'


def star(x: float, y: float, radius: float, fill: str, extra: str = "") -> str:
    """A five-pointed star centred on (x, y)."""
    points = []
    for index in range(10):
        angle = math.pi / 2 + index * math.pi / 5
        reach = radius if index % 2 == 0 else radius * 0.45
        points.append(f"{x + reach * math.cos(angle):.1f},{y - reach * math.sin(angle):.1f}")
    return f'<polygon points="{" ".join(points)}" fill="{fill}"{extra}/>'


def svg(width: float, height: float, label: str, body: list[str]) -> str:
    """An inline ``<svg>`` of ``body`` with ``label`` as its accessible name and tooltip."""
    name = html.escape(label)
    return (f'<svg class="chart" role="img" aria-label="{name}" '
            f'width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" style="{FONT}">'
            f'<title>{name}</title>' + "".join(body) + "</svg>")
