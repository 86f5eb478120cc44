"""``--html``: one self-contained page to rotate the cloud and its token centres (a canvas and
a few lines of plain JavaScript; no library, nothing fetched)."""
from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from .scene import Scene

__all__ = ["write_page"]

_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:12px}} canvas{{border:1px solid #ccc;cursor:grab}}</style></head>
<body><p>{title}: drag to rotate, wheel to zoom. Grey: points; red: token centres.</p>
<canvas id="c" width="640" height="640"></canvas>
<script>
const points = {points}, centres = {centres};
const cv = document.getElementById("c"), g = cv.getContext("2d");
let yaw = -0.6, pitch = 0.35, zoom = 1.0, drag = null;
function view(p) {{
  const cy = Math.cos(yaw), sy = Math.sin(yaw), cp = Math.cos(pitch), sp = Math.sin(pitch);
  const x = cy * p[0] - sy * p[1], y = sy * p[0] + cy * p[1];
  return [x, cp * p[2] - sp * y, sp * p[2] + cp * y];
}}
function draw() {{
  g.clearRect(0, 0, cv.width, cv.height);
  const s = 0.45 * cv.width * zoom, items = [];
  for (const p of points) items.push([view(p), "rgba(120,120,120,0.6)", 1.5]);
  for (const p of centres) items.push([view(p), "rgb(214,39,40)", 3.5]);
  items.sort((a, b) => b[0][2] - a[0][2]);
  for (const [q, colour, r] of items) {{
    g.fillStyle = colour; g.beginPath();
    g.arc(cv.width / 2 + s * q[0], cv.height / 2 - s * q[1], r, 0, 2 * Math.PI); g.fill();
  }}
}}
cv.onmousedown = e => drag = [e.clientX, e.clientY];
window.onmouseup = () => drag = null;
window.onmousemove = e => {{
  if (!drag) return;
  yaw += (e.clientX - drag[0]) * 0.01; pitch += (e.clientY - drag[1]) * 0.01; drag = [e.clientX, e.clientY]; draw();
}};
cv.onwheel = e => {{ e.preventDefault(); zoom *= e.deltaY < 0 ? 1.1 : 1 / 1.1; draw(); }};
draw();
</script></body></html>
"""


def _coords(a: np.ndarray) -> str:
    return json.dumps(np.round(np.asarray(a, dtype=np.float64), 4).tolist())


def write_page(scene: Scene, path: str | Path) -> Path:
    path = Path(path)
    title = html.escape(f"{path.stem} ({scene.source}, {len(scene.points)} points, {len(scene.centres)} tokens)")
    path.write_text(_PAGE.format(title=title, points=_coords(scene.points), centres=_coords(scene.centres)))
    return path
