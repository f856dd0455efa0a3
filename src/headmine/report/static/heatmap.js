(function () {
  "use strict";
  // layer x head heatmaps with axis names, a ticked colour bar (zero marked, the map's own min and
  // max marked) and keyboard access; line charts with their legend outside the plot.
  var HM = window.HM, el = HM.el, sv = HM.sv, fmt = HM.fmt;

  // colour bar: the (shared) scale with ticks and unit; the map's own min and max as markers
  function colourBar(container, sc, own) {
    var W = 220, L = 10, R = 10, bw = W - L - R;
    var svg = sv("svg", { "class": "colourbar", width: W, height: 40, viewBox: "0 0 " + W + " 40", role: "img",
      "aria-label": "colour scale from " + fmt(sc.lo) + " to " + fmt(sc.hi) + (sc.unit ? " " + sc.unit : "") });
    for (var k = 0; k < 40; k++) {
      svg.appendChild(sv("rect", { x: L + k * bw / 40, y: 8, width: bw / 40 + 0.5, height: 9, fill: sc.stops(k / 39) }));
    }
    svg.appendChild(sv("rect", { x: L, y: 8, width: bw, height: 9, fill: "none", stroke: "#999", "stroke-width": 0.5 }));
    HM.ticks(sc.lo, sc.hi, 4).forEach(function (t) {
      var x = L + sc.pos(t) * bw, zero = t === 0;
      svg.appendChild(sv("line", { x1: x, x2: x, y1: zero ? 5 : 17, y2: 21, stroke: zero ? "#000" : "#555", "stroke-width": zero ? 1.6 : 0.8, "class": zero ? "tick zero" : "tick" }));
      svg.appendChild(sv("text", { x: x, y: 31, "text-anchor": "middle", "class": zero ? "tick-label zero" : "tick-label" }, fmt(t, 3)));
    });
    if (own) {
      [["min", own.min], ["max", own.max]].forEach(function (p) {
        var x = L + Math.max(0, Math.min(1, sc.pos(p[1]))) * bw;
        var tri = sv("path", { d: "M" + (x - 4) + " 0 L" + (x + 4) + " 0 L" + x + " 7 Z", fill: "#d00", "class": "own-" + p[0] });
        tri.appendChild(sv("title", null, "this map's " + p[0] + " " + fmt(p[1])));
        svg.appendChild(tri);
      });
    }
    container.appendChild(svg);
    var txt = own ? "this map: min " + fmt(own.min) + ", max " + fmt(own.max) + " (▼)" : "this map: no values";
    txt += " · scale " + fmt(sc.lo) + " to " + fmt(sc.hi) + (sc.unit ? " " + sc.unit : "") + (sc.shared > 1 ? ", shared by " + sc.shared + " maps" : "");
    container.appendChild(el("div", { "class": "range" }, txt));
  }
  HM.colourBar = colourBar;

  // opts: rowLabels, colLabels, rowName, colName, cell, cellH, left, scale (from HM.makeScale),
  // onClick(i, j), tipText(i, j, v), label (aria)
  HM.heatmap = function (container, z, opts) {
    opts = opts || {};
    var nR = z.length, nC = nR ? z[0].length : 0;
    if (!nR || !nC) { container.appendChild(el("p", { "class": "muted" }, "no values")); return null; }
    var cw = opts.cell || Math.max(8, Math.min(26, Math.floor(560 / nC)));
    var ch = opts.cellH || Math.max(7, Math.min(18, Math.floor(420 / nR)));
    var left = opts.left || 40, top = 30;
    var W = left + nC * cw + 4, H = top + nR * ch + 2;
    var own = HM.ownRange(z);
    var sc = opts.scale || HM.makeScale(own ? own.min : 0, own ? own.max : 0, "");
    var svg = sv("svg", { "class": "heatmap", width: W, height: H, viewBox: "0 0 " + W + " " + H, role: "grid", tabindex: 0,
      "aria-label": (opts.label || "heatmap") + ": use the arrow keys to move between cells, Enter to open a head" });
    var g = sv("g");
    for (var i = 0; i < nR; i++) {
      for (var j = 0; j < nC; j++) {
        var v = z[i][j];
        g.appendChild(sv("rect", { "class": "cell", x: left + j * cw, y: top + i * ch, width: cw - 1, height: ch - 1,
          fill: HM.finite(v) ? sc.color(v) : "#eeeeee", "data-i": i, "data-j": j }));
      }
    }
    svg.appendChild(g);
    var rl = opts.rowLabels, cl = opts.colLabels;
    var rStep = Math.max(1, Math.ceil(11 / ch)), cStep = Math.max(1, Math.ceil(22 / cw));
    for (i = 0; i < nR; i += rStep) {
      svg.appendChild(sv("text", { x: left - 4, y: top + i * ch + ch / 2 + 3, "text-anchor": "end" }, rl ? rl[i] : "L" + i));
    }
    for (j = 0; j < nC; j += cStep) {
      svg.appendChild(sv("text", { x: left + j * cw + cw / 2, y: top - 4, "text-anchor": "middle" }, cl ? cl[j] : "H" + j));
    }
    svg.appendChild(sv("text", { x: left, y: 11, "class": "axis-name" }, (opts.colName || "head") + " →"));
    svg.appendChild(sv("text", { x: 2, y: 11, "class": "axis-name" }, (opts.rowName || "layer") + " ↓"));
    var cursor = sv("rect", { "class": "cursor", width: cw + 1, height: ch + 1, fill: "none", stroke: "#000", "stroke-width": 2, visibility: "hidden" });
    svg.appendChild(cursor);
    var at = [0, 0];
    function tipFor(a, b) {
      return opts.tipText ? opts.tipText(a, b, z[a][b]) : (a + "," + b + ": " + fmt(z[a][b]));
    }
    svg.addEventListener("mousemove", function (evt) {
      var t = evt.target;
      if (!t || t.getAttribute("class") !== "cell") { HM.hideTip(); return; }
      HM.showTip(tipFor(+t.getAttribute("data-i"), +t.getAttribute("data-j")), evt);
    });
    svg.addEventListener("mouseleave", HM.hideTip);
    function moveTo(a, b) {
      at = [Math.max(0, Math.min(nR - 1, a)), Math.max(0, Math.min(nC - 1, b))];
      cursor.setAttribute("x", left + at[1] * cw - 1);
      cursor.setAttribute("y", top + at[0] * ch - 1);
      cursor.setAttribute("visibility", "visible");
      svg.setAttribute("aria-activedescendant", "");
      svg.setAttribute("data-at", at[0] + "," + at[1]);
      var r = svg.getBoundingClientRect();
      HM.showTipAt(tipFor(at[0], at[1]), r.left + left + (at[1] + 1) * cw + 6, r.top + top + (at[0] + 1) * ch + 6);
    }
    svg.addEventListener("focus", function () { moveTo(at[0], at[1]); });
    svg.addEventListener("blur", function () { cursor.setAttribute("visibility", "hidden"); HM.hideTip(); });
    svg.addEventListener("keydown", function (evt) {
      var d = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] }[evt.key];
      if (d) { evt.preventDefault(); moveTo(at[0] + d[0], at[1] + d[1]); return; }
      if ((evt.key === "Enter" || evt.key === " ") && opts.onClick) { evt.preventDefault(); HM.hideTip(); opts.onClick(at[0], at[1]); }
    });
    if (opts.onClick) {
      svg.addEventListener("click", function (evt) {
        var t = evt.target;
        if (t && t.getAttribute("class") === "cell") { HM.hideTip(); opts.onClick(+t.getAttribute("data-i"), +t.getAttribute("data-j")); }
      });
    }
    container.appendChild(svg);
    if (!opts.noBar) { colourBar(container, sc, own); }
    return svg;
  };

  // ---------------------------------------------------------------- line charts
  var PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
  HM.lineChart = function (container, c) {
    var pts = c.points || [];
    if (!pts.length) { return; }
    var nLines = pts[0].length - 1, W = 360, H = 190, L = 52, R = 8, T = 10, B = 34;
    var xs = pts.map(function (p) { return p[0]; });
    var ys = [];
    pts.forEach(function (p) { for (var k = 1; k < p.length; k++) { if (HM.finite(p[k])) { ys.push(p[k]); } } });
    if (!ys.length) { container.appendChild(el("p", { "class": "muted" }, "no finite values")); return; }
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs), y0 = Math.min.apply(null, ys), y1 = Math.max.apply(null, ys);
    if (x1 === x0) { x1 = x0 + 1; } if (y1 === y0) { y1 = y0 + 1; }
    var svg = sv("svg", { "class": "curve", width: W, height: H, viewBox: "0 0 " + W + " " + H });
    function X(v) { return L + (v - x0) / (x1 - x0) * (W - L - R); }
    function Y(v) { return T + (1 - (v - y0) / (y1 - y0)) * (H - T - B); }
    svg.appendChild(sv("rect", { x: L, y: T, width: W - L - R, height: H - T - B, fill: "#fafbfc", stroke: "#ddd" }));
    HM.ticks(y0, y1, 4).forEach(function (t) {
      svg.appendChild(sv("line", { x1: L - 3, x2: L, y1: Y(t), y2: Y(t), stroke: "#555" }));
      svg.appendChild(sv("text", { x: L - 5, y: Y(t) + 3, "text-anchor": "end" }, fmt(t, 3)));
    });
    if (y0 < 0 && y1 > 0) { svg.appendChild(sv("line", { x1: L, x2: W - R, y1: Y(0), y2: Y(0), stroke: "#999", "stroke-dasharray": "3 2" })); }
    HM.ticks(x0, x1, 4).forEach(function (t) {
      svg.appendChild(sv("text", { x: X(t), y: H - B + 13, "text-anchor": "middle" }, fmt(t, 3)));
    });
    svg.appendChild(sv("text", { x: (W + L) / 2, y: H - 4, "text-anchor": "middle", "class": "axis-name" }, c.x || "step"));
    var legend = el("div", { "class": "curve-legend" });
    for (var k = 1; k <= nLines; k++) {
      var d = "", pen = false;
      for (var i = 0; i < pts.length; i++) {
        var v = pts[i][k];
        if (!HM.finite(v)) { pen = false; continue; }
        d += (pen ? " L" : " M") + X(pts[i][0]).toFixed(1) + " " + Y(v).toFixed(1);
        pen = true;
      }
      var name = c.legend ? c.legend[k - 1] : (nLines > 1 ? "seed " + (k - 1) : c.name);
      var colour = PALETTE[(k - 1) % PALETTE.length];
      var path = sv("path", { d: d, fill: "none", stroke: colour, "stroke-width": 1.5 });
      path.appendChild(sv("title", null, name));
      svg.appendChild(path);
      if (c.legend || nLines > 1) {
        var item = el("span", { "class": "legend-item" });
        item.appendChild(el("span", { "class": "sw", style: "background:" + colour }));
        item.appendChild(document.createTextNode(name));
        legend.appendChild(item);
      }
    }
    container.appendChild(svg);
    if (legend.childNodes.length) { container.appendChild(legend); }
  };
})();
