"""Write docs/architecture.svg from the layout below (no network, no graphviz): `python docs/make_architecture.py`."""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape

# name: (x, y, width, height, title, subtitle, fill)
BOXES: dict[str, tuple[int, int, int, int, str, str, str]] = {
    "client": (20, 40, 150, 56, "HTTP client", "JWT bearer token", "#eeeeee"),
    "proxy": (210, 110, 150, 56, "Serve proxy", "HEIMDEX_INGRESS=proxy", "#dde8f6"),
    "gateway": (400, 30, 220, 76, "Gateway (serve_app/)", "FastAPI: auth, tenancy, /metrics", "#cfe0f5"),
    "embedder": (700, 20, 230, 60, "Embedder replicas", "@serve.batch + Coalescer", "#d8f0d8"),
    "store": (700, 130, 230, 60, "VectorStore actor", "deployments/vector_store (edge|server)", "#f6e7c8"),
    "sql": (400, 170, 220, 56, "SQL: jobs + outbox", "serve_app/db (one transaction)", "#f2dada"),
    "relay": (400, 270, 220, 60, "OutboxRelay", "serve_app/relay.py (leases, retries)", "#ead8f2"),
    "jobsubmit": (20, 380, 170, 56, "ray job submit", "heimdex reembed / RayJob", "#eeeeee"),
    "reembed": (230, 380, 230, 56, "jobs/reembed.py", "Ray Data read -> map_batches", "#d8f0d8"),
    "sink": (520, 380, 170, 56, "Qdrant sink", "jobs/qdrant_sink.py", "#f6e7c8"),
    "metrics": (730, 270, 200, 60, "Prometheus", "scrapes GET /metrics", "#e6e6e6"),
}
# (from, to, label)
ARROWS: list[tuple[str, str, str]] = [
    ("client", "gateway", "direct ingress"),
    ("client", "proxy", ""),
    ("proxy", "gateway", ""),
    ("gateway", "embedder", "1: embed (online)"),
    ("gateway", "store", "search"),
    ("gateway", "sql", "2: accept job"),
    ("sql", "relay", "claim (SKIP LOCKED)"),
    ("relay", "embedder", "embed"),
    ("relay", "store", "upsert"),
    ("jobsubmit", "reembed", ""),
    ("reembed", "sink", "3: bulk"),
    ("sink", "store", "upsert"),
    ("metrics", "gateway", "scrape"),
]


def _center(name: str) -> tuple[float, float]:
    x, y, w, h, *_ = BOXES[name]
    return x + w / 2, y + h / 2


def _edge_point(name: str, toward: tuple[float, float]) -> tuple[float, float]:
    """Where the segment from the box centre toward a point leaves the box."""
    _x, _y, w, h, *_ = BOXES[name]
    cx, cy = _center(name)
    dx, dy = toward[0] - cx, toward[1] - cy
    if dx == 0 and dy == 0:
        return cx, cy
    scale = min((w / 2) / abs(dx) if dx else float("inf"), (h / 2) / abs(dy) if dy else float("inf"))
    return cx + dx * scale, cy + dy * scale


def render() -> str:
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" width="960" height="460" viewBox="0 0 960 460" '
             'font-family="Helvetica, Arial, sans-serif">',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
             'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#444"/></marker></defs>',
             '<rect width="960" height="460" fill="white"/>',
             '<text x="20" y="360" font-size="12" fill="#666">3: bulk path (Ray Job, same backend code as '
             'the Embedder)</text>']
    for source, target, label in ARROWS:
        x1, y1 = _edge_point(source, _center(target))
        x2, y2 = _edge_point(target, _center(source))
        parts.append(f'<line x1="{x1:.0f}" y1="{y1:.0f}" x2="{x2:.0f}" y2="{y2:.0f}" stroke="#444" '
                     'stroke-width="1.4" marker-end="url(#arrow)"/>')
        if label:
            parts.append(f'<text x="{(x1 + x2) / 2 + 4:.0f}" y="{(y1 + y2) / 2 - 4:.0f}" font-size="11" '
                         f'fill="#333">{escape(label)}</text>')
    for x, y, w, h, title, subtitle, fill in BOXES.values():
        parts.append(f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="8" fill="{fill}" stroke="#555"/>')
        parts.append(f'<text x="{x + w / 2:.0f}" y="{y + h / 2 - 4:.0f}" font-size="13" font-weight="bold" '
                     f'text-anchor="middle">{escape(title)}</text>')
        parts.append(f'<text x="{x + w / 2:.0f}" y="{y + h / 2 + 13:.0f}" font-size="11" text-anchor="middle" '
                     f'fill="#333">{escape(subtitle)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main() -> int:
    out = Path(__file__).with_name("architecture.svg")
    out.write_text(render())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
