"""The embedding explorer: one self-contained HTML file of a run's latent map.

Each test cell of the map is a point; hovering shows its thumbnail and the value it is coloured
by, a click shows the cell beside its reconstruction with everything known of it, and a menu
colours the map by any column (class, patient, every metadata column of the source, the
reconstruction error). Thumbnails travel as two sprite sheets, as TensorBoard's projector
does, and the points are drawn on a canvas, so thousands stay smooth; nothing is fetched, so
the file can be mailed or opened from a report folder.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cellae.files import write_atomic
from cellae.images import display_rgb

# the thumbnails' side: cells are drawn at most this large in the sprites
MAX_TILE = 64
JPEG_QUALITY = 90
# a column with more distinct values than this, all numbers, is coloured on a scale
CATEGORY_MAX = 20
# tab20's dark shades, then its light ones: the report's patient colours
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896",
           "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5"]


def write_explorer(path: Path, embedding: np.ndarray, originals: np.ndarray,
                   reconstructions: np.ndarray, columns: dict[str, np.ndarray], *, run: str,
                   method: str = "t-SNE", channel_names: list[str] | None = None) -> Path:
    """Write the explorer of ``embedding`` (M, 2) whose cells are ``originals`` and
    ``reconstructions`` (uint8 M x C x H x W) and whose ``columns`` are M values each."""
    embedding = np.asarray(embedding, dtype=np.float64)
    m = len(embedding)
    if not (len(originals) == len(reconstructions) == m) or any(
            len(v) != m for v in columns.values()):
        raise ValueError("the explorer needs one image, reconstruction and value per point")
    tile = min(MAX_TILE, int(originals.shape[-1]))
    per_row = max(1, math.ceil(math.sqrt(m)))
    payload: dict[str, Any] = {
        "run": run, "method": method, "n": m, "tile": tile, "perRow": per_row,
        "x": _rounded(embedding[:, 0]), "y": _rounded(embedding[:, 1]),
        "columns": {name: _column(values) for name, values in columns.items()},
        "channels": list(channel_names or []),
        "palette": PALETTE,
    }
    page = (_TEMPLATE
            .replace("__TITLE__", html.escape(f"{run}: {method} explorer"))
            .replace("__ORIGINALS__", _sprite(originals, tile, per_row))
            .replace("__RECONSTRUCTIONS__", _sprite(reconstructions, tile, per_row))
            # </script> inside a string would end the script early
            .replace("__DATA__", json.dumps(payload, ensure_ascii=True).replace("</", "<\\/")))
    write_atomic(Path(path), page)
    return Path(path)


def _rounded(values: np.ndarray) -> list[float]:
    return [round(float(v), 4) for v in values]


def _column(values: np.ndarray) -> dict[str, Any]:
    """A column as the page reads it: numbers, or categories as codes into their levels."""
    array = np.asarray(values)
    numbers = numeric_values(array)
    if numbers is not None:
        return {"kind": "number",
                "values": [None if not np.isfinite(v) else round(float(v), 6) for v in numbers]}
    text = array.astype(str)
    levels, codes = np.unique(text, return_inverse=True)
    counts = np.bincount(codes, minlength=len(levels))
    # the commonest levels get the palette's colours, the rest grey
    rank = np.argsort(-counts, kind="stable")
    coloured = np.full(len(levels), -1)
    coloured[rank[:len(PALETTE)]] = np.arange(min(len(PALETTE), len(levels)))
    return {"kind": "category", "levels": levels.tolist(), "codes": codes.tolist(),
            "colour": coloured.tolist()}


def numeric_values(values: np.ndarray) -> np.ndarray | None:
    """A column as float64 where it is drawn as a number, on a colour scale: numbers
    already, or strings that all read as numbers with more than :data:`CATEGORY_MAX` distinct
    values (a well number or a cell-cycle phase is a category); else None."""
    array = np.asarray(values)
    if array.dtype.kind in "fiu":
        return array.astype(np.float64)
    try:
        numbers = np.array([float(v) if str(v).strip() else np.nan for v in array.tolist()])
    except ValueError:
        return None
    distinct = np.unique(numbers[np.isfinite(numbers)])
    return numbers if len(distinct) > CATEGORY_MAX else None


def _sprite(images: np.ndarray, tile: int, per_row: int) -> str:
    """The images as one JPEG sprite sheet, ``per_row`` tiles of ``tile`` px a row, a data URI."""
    rgb = display_rgb(np.asarray(images)).transpose(0, 2, 3, 1)
    rows = math.ceil(len(rgb) / per_row)
    sheet = np.zeros((rows * tile, per_row * tile, 3), dtype=np.uint8)
    for i, image in enumerate(rgb):
        if image.shape[0] != tile:
            image = np.asarray(Image.fromarray(image).resize((tile, tile), Image.Resampling.BILINEAR))
        r, c = divmod(i, per_row)
        sheet[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = image
    buffer = io.BytesIO()
    Image.fromarray(sheet).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
body { margin: 0; font: 14px system-ui, sans-serif; color: #222; display: flex; height: 100vh; }
#main { flex: 1; display: flex; flex-direction: column; min-width: 0; }
#bar { padding: 8px 12px; border-bottom: 1px solid #ddd; display: flex; gap: 16px; align-items: center; flex-wrap: wrap; }
#bar h1 { font-size: 15px; margin: 0; font-weight: 600; }
#map-wrap { flex: 1; position: relative; }
#map { position: absolute; inset: 0; width: 100%; height: 100%; cursor: crosshair; }
#legend { padding: 6px 12px; border-top: 1px solid #ddd; max-height: 110px; overflow: auto; font-size: 12px; }
#legend span { display: inline-block; margin: 2px 10px 2px 0; white-space: nowrap; }
#legend i { display: inline-block; width: 10px; height: 10px; border-radius: 5px; margin-right: 4px; vertical-align: -1px; }
#tip { position: absolute; pointer-events: none; background: #fff; border: 1px solid #999; border-radius: 4px; padding: 4px; font-size: 12px; display: none; box-shadow: 0 2px 6px rgba(0,0,0,.2); max-width: 260px; z-index: 2; }
#tip canvas, #panel canvas { image-rendering: pixelated; display: block; background: #000; }
#panel { width: 300px; border-left: 1px solid #ddd; padding: 12px; overflow: auto; }
#panel table { border-collapse: collapse; font-size: 12px; width: 100%; }
#panel td { border-bottom: 1px solid #eee; padding: 2px 4px; vertical-align: top; word-break: break-all; }
#panel .pair { display: flex; gap: 8px; margin-bottom: 8px; }
#panel .pair div { font-size: 11px; color: #555; text-align: center; }
.hint { color: #777; font-size: 12px; }
</style></head>
<body>
<div id="main">
  <div id="bar"><h1 id="title"></h1>
    <label>colour by <select id="colour-by"></select></label>
    <span class="hint">hover a point for its cell; click to pin it; wheel to zoom, drag to pan, double-click to reset</span>
  </div>
  <div id="map-wrap"><canvas id="map"></canvas><div id="tip"></div></div>
  <div id="legend"></div>
</div>
<div id="panel"><p class="hint" id="panel-hint">Click a point to see the cell, its reconstruction and its metadata.</p><div id="cell"></div></div>
<img id="sprite-originals" src="__ORIGINALS__" alt="" hidden>
<img id="sprite-reconstructions" src="__RECONSTRUCTIONS__" alt="" hidden>
<script>
(function () {
  "use strict";
  var data = __DATA__;
  var canvas = document.getElementById("map"), ctx = canvas.getContext("2d");
  var tip = document.getElementById("tip"), select = document.getElementById("colour-by");
  var originals = document.getElementById("sprite-originals");
  var recons = document.getElementById("sprite-reconstructions");
  var n = data.n, names = Object.keys(data.columns);
  document.getElementById("title").textContent = data.run + ": " + data.method + " of " + n + " test cells" +
    (data.channels.length ? " (" + data.channels.join(", ") + ")" : "");
  var minX = Math.min.apply(null, data.x), maxX = Math.max.apply(null, data.x);
  var minY = Math.min.apply(null, data.y), maxY = Math.max.apply(null, data.y);
  var view = {zoom: 1, dx: 0, dy: 0}, width = 0, height = 0, ratio = window.devicePixelRatio || 1;
  var colours = new Array(n), order = [], hovered = -1, pinned = -1, frame = 0;
  for (var i = 0; i < n; i++) order.push(i);
  // a fixed shuffle, so that no class is painted over the others
  var seed = 1;
  for (var k = n - 1; k > 0; k--) { seed = (seed * 16807) % 2147483647; var j = seed % (k + 1); var t = order[k]; order[k] = order[j]; order[j] = t; }
  var viridis = ["#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962", "#addc30", "#fde725"];
  function ramp(v) { var p = Math.max(0, Math.min(1, v)) * (viridis.length - 1), a = Math.floor(p); return viridis[Math.min(a + (p - a >= 0.5 ? 1 : 0), viridis.length - 1)]; }
  function label(name, i) {
    var c = data.columns[name];
    if (c.kind === "number") { var v = c.values[i]; return v === null ? "n/a" : String(v); }
    return c.levels[c.codes[i]];
  }
  function colourBy(name) {
    var c = data.columns[name], legend = document.getElementById("legend"), parts = [];
    if (c.kind === "number") {
      var finite = c.values.filter(function (v) { return v !== null; });
      var lo = Math.min.apply(null, finite), hi = Math.max.apply(null, finite), span = hi - lo || 1;
      for (var i = 0; i < n; i++) colours[i] = c.values[i] === null ? "#cccccc" : ramp((c.values[i] - lo) / span);
      parts.push("<span>" + escapeHtml(name) + ": </span>");
      for (var s = 0; s < viridis.length; s++) parts.push('<span><i style="background:' + viridis[s] + '"></i>' + (lo + span * s / (viridis.length - 1)).toPrecision(3) + "</span>");
    } else {
      var counts = c.levels.map(function () { return 0; });
      for (var i2 = 0; i2 < n; i2++) { var code = c.codes[i2], slot = c.colour[code]; colours[i2] = slot < 0 ? "#cccccc" : data.palette[slot]; counts[code]++; }
      var shown = c.levels.map(function (l, idx) { return idx; }).filter(function (idx) { return c.colour[idx] >= 0; });
      shown.forEach(function (idx) { parts.push('<span class="level"><i style="background:' + data.palette[c.colour[idx]] + '"></i>' + escapeHtml(c.levels[idx] || "(empty)") + " (" + counts[idx] + ")</span>"); });
      if (shown.length < c.levels.length) parts.push('<span><i style="background:#cccccc"></i>' + (c.levels.length - shown.length) + " others</span>");
    }
    legend.innerHTML = parts.join("");
    legend.setAttribute("data-column", name);
    draw();
  }
  function escapeHtml(text) { return String(text).replace(/[&<>"']/g, function (ch) { return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[ch]; }); }
  function position(i) {
    var pad = 16, scale = Math.min((width - 2 * pad) / ((maxX - minX) || 1), (height - 2 * pad) / ((maxY - minY) || 1));
    var cx = (data.x[i] - (minX + maxX) / 2) * scale, cy = -(data.y[i] - (minY + maxY) / 2) * scale;
    return [width / 2 + cx * view.zoom + view.dx, height / 2 + cy * view.zoom + view.dy];
  }
  function radius() { return Math.max(1.5, Math.min(6, 900 / Math.sqrt(n + 1) / 8)) * Math.sqrt(view.zoom); }
  function resize() {
    var box = canvas.parentElement.getBoundingClientRect();
    width = box.width; height = box.height;
    canvas.width = Math.round(width * ratio); canvas.height = Math.round(height * ratio);
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    draw();
  }
  function draw() {
    var start = performance.now(), r = radius();
    ctx.clearRect(0, 0, width, height);
    ctx.globalAlpha = 0.8;
    for (var k = 0; k < n; k++) {
      var i = order[k], p = position(i);
      ctx.fillStyle = colours[i];
      ctx.fillRect(p[0] - r, p[1] - r, 2 * r, 2 * r);
    }
    ctx.globalAlpha = 1;
    [hovered, pinned].forEach(function (i) {
      if (i < 0) return;
      var p = position(i); ctx.strokeStyle = "#000"; ctx.lineWidth = 2;
      ctx.strokeRect(p[0] - r - 2, p[1] - r - 2, 2 * r + 4, 2 * r + 4);
    });
    api.lastDrawMs = performance.now() - start;
    api.draws++;
  }
  function nearest(x, y) {
    var best = -1, bestD = Math.pow(Math.max(8, radius() + 4), 2);
    for (var i = 0; i < n; i++) { var p = position(i), d = (p[0] - x) * (p[0] - x) + (p[1] - y) * (p[1] - y); if (d < bestD) { bestD = d; best = i; } }
    return best;
  }
  function thumbnail(sprite, i, scale) {
    var c = document.createElement("canvas"), t = data.tile;
    c.width = t * scale; c.height = t * scale;
    var g = c.getContext("2d"); g.imageSmoothingEnabled = false;
    g.drawImage(sprite, (i % data.perRow) * t, Math.floor(i / data.perRow) * t, t, t, 0, 0, t * scale, t * scale);
    return c;
  }
  function showTip(i, x, y) {
    if (i < 0) { tip.style.display = "none"; tip.removeAttribute("data-index"); return; }
    tip.innerHTML = "";
    tip.appendChild(thumbnail(originals, i, 2));
    var text = document.createElement("div");
    text.textContent = label("file", i) + " \u2014 " + select.value + ": " + label(select.value, i);
    tip.appendChild(text);
    tip.style.display = "block";
    tip.setAttribute("data-index", String(i));
    tip.style.left = Math.min(x + 14, width - 200) + "px"; tip.style.top = Math.min(y + 14, height - 120) + "px";
  }
  function pin(i) {
    pinned = i;
    var cell = document.getElementById("cell");
    cell.innerHTML = "";
    cell.setAttribute("data-index", String(i));
    if (i < 0) { draw(); return; }
    document.getElementById("panel-hint").style.display = "none";
    var pair = document.createElement("div"); pair.className = "pair";
    [[originals, "cell"], [recons, "reconstruction"]].forEach(function (item) {
      var box = document.createElement("div"), scale = Math.max(1, Math.floor(128 / data.tile));
      box.appendChild(thumbnail(item[0], i, scale));
      box.appendChild(document.createTextNode(item[1]));
      pair.appendChild(box);
    });
    cell.appendChild(pair);
    var table = document.createElement("table");
    names.forEach(function (name) {
      var row = table.insertRow(); row.insertCell().textContent = name; row.insertCell().textContent = label(name, i);
    });
    cell.appendChild(table);
    draw();
  }
  var drag = null;
  canvas.addEventListener("mousemove", function (event) {
    var box = canvas.getBoundingClientRect(), x = event.clientX - box.left, y = event.clientY - box.top;
    if (drag) { view.dx = drag.dx + x - drag.x; view.dy = drag.dy + y - drag.y; drag.moved = true; schedule(); return; }
    var i = nearest(x, y);
    if (i !== hovered) { hovered = i; schedule(); }
    showTip(i, x, y);
  });
  canvas.addEventListener("mouseleave", function () { hovered = -1; showTip(-1); schedule(); });
  canvas.addEventListener("mousedown", function (event) {
    var box = canvas.getBoundingClientRect();
    drag = {x: event.clientX - box.left, y: event.clientY - box.top, dx: view.dx, dy: view.dy, moved: false};
  });
  window.addEventListener("mouseup", function (event) {
    if (drag && !drag.moved) {
      var box = canvas.getBoundingClientRect();
      pin(nearest(event.clientX - box.left, event.clientY - box.top));
    }
    drag = null;
  });
  canvas.addEventListener("wheel", function (event) {
    event.preventDefault();
    var box = canvas.getBoundingClientRect(), x = event.clientX - box.left - width / 2, y = event.clientY - box.top - height / 2;
    var factor = Math.exp(-event.deltaY * 0.0015), zoom = Math.max(0.5, Math.min(40, view.zoom * factor)), f = zoom / view.zoom;
    view.dx = x - (x - view.dx) * f; view.dy = y - (y - view.dy) * f; view.zoom = zoom;
    schedule();
  }, {passive: false});
  canvas.addEventListener("dblclick", function () { view = {zoom: 1, dx: 0, dy: 0}; schedule(); });
  function schedule() { if (!frame) frame = requestAnimationFrame(function () { frame = 0; draw(); }); }
  names.forEach(function (name) { var o = document.createElement("option"); o.value = name; o.textContent = name; select.appendChild(o); });
  select.value = names.indexOf("class") >= 0 ? "class" : names[0];
  select.addEventListener("change", function () { colourBy(select.value); });
  var api = window.cellaeExplorer = {
    n: n, columns: names, draws: 0, lastDrawMs: 0, ready: false,
    screenPosition: function (i) { var p = position(i), box = canvas.getBoundingClientRect(); return [box.left + p[0], box.top + p[1]]; },
    colourOf: function (i) { return colours[i]; },
    label: label,
    redraw: draw
  };
  window.addEventListener("resize", resize);
  function start() { resize(); colourBy(select.value); api.ready = true; }
  var pending = [originals, recons].filter(function (img) { return !img.complete; }).length;
  if (!pending) start(); else [originals, recons].forEach(function (img) { img.addEventListener("load", function () { if (--pending === 0) start(); }); });
})();
</script>
</body></html>
"""
