"""An incident's hosts and the links between them as an SVG drawn on the
server: hosts on a circle in the order they became involved, each link an
arrow labelled with its port.  Every name is escaped; no script, no style
from the data."""

from __future__ import annotations

import math
from html import escape

from hive.correlate import Incident

SIZE = 480
_R = 28  # a host's circle
_MAX_LABEL = 24


def _label(text: str) -> str:
    return escape(text if len(text) <= _MAX_LABEL else text[:_MAX_LABEL - 1] + "\u2026", quote=True)


def incident_svg(incident: Incident) -> str:
    hosts = list(dict.fromkeys([*incident.agents, *(h for a, b, _ in incident.edges for h in (a, b))]))
    n = len(hosts)
    centre, ring = SIZE / 2, (SIZE / 2 - 70 if n > 1 else 0)
    where = {h: (centre + ring * math.cos(2 * math.pi * i / n - math.pi / 2),
                 centre + ring * math.sin(2 * math.pi * i / n - math.pi / 2)) for i, h in enumerate(hosts)}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {SIZE} {SIZE}" class="graph" role="img" '
           f'aria-label="{_label(incident.title)}: {n} hosts, {len(incident.edges)} links">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" '
           'orient="auto-start-reverse"><path d="M0,0L10,5L0,10z" class="arrowhead"/></marker></defs>']
    for source, target, port in dict.fromkeys(incident.edges):
        (x1, y1), (x2, y2) = where[source], where[target]
        length = math.hypot(x2 - x1, y2 - y1) or 1.0
        # From rim to rim, so the arrowhead is not hidden under the circle.
        dx, dy = (x2 - x1) / length * _R, (y2 - y1) / length * _R
        out.append(f'<line class="link" x1="{x1 + dx:.1f}" y1="{y1 + dy:.1f}" x2="{x2 - dx:.1f}" '
                   f'y2="{y2 - dy:.1f}" marker-end="url(#arrow)"/>')
        out.append(f'<text class="port" x="{(x1 + x2) / 2:.1f}" y="{(y1 + y2) / 2 - 6:.1f}" '
                   f'text-anchor="middle">{int(port)}</text>')
    first = hosts[0] if hosts else None
    for h, (x, y) in where.items():
        kind = "host first" if h == first else "host"
        out.append(f'<g class="{kind}"><title>{escape(h)}</title>'
                   f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{_R}"/>'
                   f'<text x="{x:.1f}" y="{y + _R + 16:.1f}" text-anchor="middle">{_label(h)}</text></g>')
    out.append("</svg>")
    return "\n".join(out)
