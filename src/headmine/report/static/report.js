(function () {
  "use strict";
  // headmine report script. Data comes from the JSON block #hm-data and enters the DOM through
  // textContent / setAttribute only (never as markup), so atlas strings always render as text.
  var SVGNS = "http://www.w3.org/2000/svg";
  var dataEl = document.getElementById("hm-data");
  var D = dataEl ? JSON.parse(dataEl.textContent) : {};
  var tip = document.getElementById("tooltip");

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    if (attrs) { for (var k in attrs) { if (Object.prototype.hasOwnProperty.call(attrs, k)) { e.setAttribute(k, attrs[k]); } } }
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    return e;
  }
  function sv(tag, attrs, text) {
    var e = document.createElementNS(SVGNS, tag);
    if (attrs) { for (var k in attrs) { if (Object.prototype.hasOwnProperty.call(attrs, k)) { e.setAttribute(k, attrs[k]); } } }
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    return e;
  }
  function fmt(v) {
    if (v === null || v === undefined || typeof v !== "number" || !isFinite(v)) { return "–"; }
    var a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) { return v.toExponential(2); }
    return String(Math.round(v * 10000) / 10000);
  }
  function showTip(text, evt) {
    if (!tip) { return; }
    tip.textContent = text;
    tip.hidden = false;
    var x = evt.clientX + 14, y = evt.clientY + 14;
    var w = tip.offsetWidth, h = tip.offsetHeight;
    if (x + w > window.innerWidth - 4) { x = Math.max(4, evt.clientX - w - 10); }
    if (y + h > window.innerHeight - 4) { y = Math.max(4, evt.clientY - h - 10); }
    tip.style.left = x + "px";
    tip.style.top = y + "px";
  }
  function hideTip() { if (tip) { tip.hidden = true; } }

  // ---------------------------------------------------------------- colours
  var SEQ = [[255, 255, 217], [199, 233, 180], [65, 182, 196], [34, 94, 168], [8, 29, 88]];
  var DIV = [[33, 102, 172], [146, 197, 222], [247, 247, 247], [244, 165, 130], [178, 24, 43]];
  function ramp(stops, t) {
    t = Math.max(0, Math.min(1, t));
    var x = t * (stops.length - 1), i = Math.min(stops.length - 2, Math.floor(x)), f = x - i;
    var a = stops[i], b = stops[i + 1];
    return "rgb(" + Math.round(a[0] + (b[0] - a[0]) * f) + "," + Math.round(a[1] + (b[1] - a[1]) * f) + "," + Math.round(a[2] + (b[2] - a[2]) * f) + ")";
  }
  function scaleFor(z) {
    var lo = Infinity, hi = -Infinity;
    for (var i = 0; i < z.length; i++) { for (var j = 0; j < z[i].length; j++) {
      var v = z[i][j]; if (v !== null && isFinite(v)) { if (v < lo) { lo = v; } if (v > hi) { hi = v; } } } }
    if (lo === Infinity) { return { lo: 0, hi: 0, color: function () { return "#eee"; }, empty: true }; }
    if (lo < 0 && hi > 0) {
      var m = Math.max(-lo, hi);
      return { lo: -m, hi: m, diverging: true, color: function (v) { return ramp(DIV, (v + m) / (2 * m)); } };
    }
    var span = hi - lo || 1;
    return { lo: lo, hi: hi, color: function (v) { return ramp(SEQ, (v - lo) / span); } };
  }
  function ranks(z) {
    var flat = [];
    for (var i = 0; i < z.length; i++) { for (var j = 0; j < z[i].length; j++) {
      var v = z[i][j]; if (v !== null && isFinite(v)) { flat.push(v); } } }
    flat.sort(function (a, b) { return b - a; });
    return flat;
  }
  function rankOf(sorted, v) {
    if (v === null || !isFinite(v)) { return null; }
    var lo = 0, hi = sorted.length;
    while (lo < hi) { var mid = (lo + hi) >> 1; if (sorted[mid] > v) { lo = mid + 1; } else { hi = mid; } }
    return lo + 1;
  }

  // ---------------------------------------------------------------- heatmap
  // opts: rowLabels, colLabels, rowName, colName, title, onClick(i, j), tipText(i, j, v)
  function heatmap(container, z, opts) {
    opts = opts || {};
    var nR = z.length, nC = nR ? z[0].length : 0;
    if (!nR || !nC) { container.appendChild(el("p", { "class": "muted" }, "no values")); return null; }
    var cw = opts.cell || Math.max(8, Math.min(26, Math.floor(560 / nC)));
    var ch = opts.cellH || Math.max(7, Math.min(18, Math.floor(420 / nR)));
    var left = opts.left || 34, top = opts.top || 16;
    var W = Math.max(left + nC * cw + 6, 200), H = top + nR * ch + 40;
    var svg = sv("svg", { "class": "heatmap", width: W, height: H, viewBox: "0 0 " + W + " " + H, role: "img" });
    var sc = scaleFor(z);
    var sorted = ranks(z);
    var g = sv("g");
    for (var i = 0; i < nR; i++) {
      for (var j = 0; j < nC; j++) {
        var v = z[i][j];
        var ok = v !== null && v !== undefined && isFinite(v);
        g.appendChild(sv("rect", { "class": "cell", x: left + j * cw, y: top + i * ch, width: cw - 1, height: ch - 1,
          fill: ok ? sc.color(v) : "#eeeeee", "data-i": i, "data-j": j }));
      }
    }
    svg.appendChild(g);
    var rl = opts.rowLabels, cl = opts.colLabels;
    var rStep = Math.max(1, Math.ceil(11 / ch)), cStep = Math.max(1, Math.ceil(22 / cw));
    for (i = 0; i < nR; i += rStep) {
      svg.appendChild(sv("text", { x: left - 4, y: top + i * ch + ch / 2 + 3, "text-anchor": "end" }, rl ? rl[i] : i));
    }
    for (j = 0; j < nC; j += cStep) {
      svg.appendChild(sv("text", { x: left + j * cw + cw / 2, y: top - 4, "text-anchor": "middle" }, cl ? cl[j] : j));
    }
    var ly = top + nR * ch + 14;
    svg.appendChild(sv("text", { x: left, y: ly }, (opts.rowName || "layer") + " ↓  " + (opts.colName || "head") + " →   " +
      (sc.empty ? "all missing" : "min " + fmt(sc.lo) + "  max " + fmt(sc.hi) + (sc.diverging ? " (0 = white)" : ""))));
    for (var k = 0; k < 20; k++) {
      svg.appendChild(sv("rect", { x: left + k * 6, y: ly + 6, width: 6, height: 7,
        fill: sc.diverging ? ramp(DIV, k / 19) : ramp(SEQ, k / 19) }));
    }
    svg.addEventListener("mousemove", function (evt) {
      var t = evt.target;
      if (!t || t.getAttribute("class") !== "cell") { hideTip(); return; }
      var a = +t.getAttribute("data-i"), b = +t.getAttribute("data-j"), val = z[a][b];
      var text = opts.tipText ? opts.tipText(a, b, val) : (a + "," + b + ": " + fmt(val));
      var r = rankOf(sorted, val);
      if (r !== null && !opts.noRank) { text += "\nrank " + r + " of " + sorted.length; }
      showTip(text, evt);
    });
    svg.addEventListener("mouseleave", hideTip);
    if (opts.onClick) {
      svg.addEventListener("click", function (evt) {
        var t = evt.target;
        if (t && t.getAttribute("class") === "cell") { hideTip(); opts.onClick(+t.getAttribute("data-i"), +t.getAttribute("data-j")); }
      });
    }
    container.appendChild(svg);
    return svg;
  }

  function seriesTip(s) {
    return function (l, h, v) {
      var t = "L" + l + "H" + h + "  " + s.label + "\nvalue " + fmt(v);
      if (s.se && s.se[l] && s.se[l][h] !== null) { t += " ± " + fmt(s.se[l][h]); }
      if (s.n) { t += "  (n=" + s.n + ")"; }
      var role = D.roles && D.roles["L" + l + "H" + h];
      if (role) { t += "\nrole: " + role.head_type; }
      return t;
    };
  }
  function goHead(l, h) { location.hash = "#head/L" + l + "H" + h; }

  function seriesMap(list) {
    var m = {};
    (list || []).forEach(function (s) { m[s.key] = s; });
    return m;
  }

  // ---------------------------------------------------------------- line charts
  var PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
  function lineChart(container, c) {
    var pts = c.points || [];
    if (!pts.length) { return; }
    var nLines = pts[0].length - 1, W = 360, H = 190, L = 46, R = 8, T = 10, B = 30;
    var xs = pts.map(function (p) { return p[0]; });
    var ys = [];
    pts.forEach(function (p) { for (var k = 1; k < p.length; k++) { if (p[k] !== null && isFinite(p[k])) { ys.push(p[k]); } } });
    if (!ys.length) { container.appendChild(el("p", { "class": "muted" }, "no finite values")); return; }
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs), y0 = Math.min.apply(null, ys), y1 = Math.max.apply(null, ys);
    if (x1 === x0) { x1 = x0 + 1; } if (y1 === y0) { y1 = y0 + 1; }
    var svg = sv("svg", { "class": "curve", width: W, height: H, viewBox: "0 0 " + W + " " + H });
    function X(v) { return L + (v - x0) / (x1 - x0) * (W - L - R); }
    function Y(v) { return T + (1 - (v - y0) / (y1 - y0)) * (H - T - B); }
    svg.appendChild(sv("rect", { x: L, y: T, width: W - L - R, height: H - T - B, fill: "#fafbfc", stroke: "#ddd" }));
    svg.appendChild(sv("text", { x: L - 4, y: T + 8, "text-anchor": "end" }, fmt(y1)));
    svg.appendChild(sv("text", { x: L - 4, y: H - B, "text-anchor": "end" }, fmt(y0)));
    svg.appendChild(sv("text", { x: L, y: H - B + 13 }, fmt(x0)));
    svg.appendChild(sv("text", { x: W - R, y: H - B + 13, "text-anchor": "end" }, fmt(x1)));
    svg.appendChild(sv("text", { x: (W + L) / 2, y: H - 4, "text-anchor": "middle" }, c.x || "step"));
    for (var k = 1; k <= nLines; k++) {
      var d = "", pen = false;
      for (var i = 0; i < pts.length; i++) {
        var v = pts[i][k];
        if (v === null || !isFinite(v)) { pen = false; continue; }
        d += (pen ? " L" : " M") + X(pts[i][0]).toFixed(1) + " " + Y(v).toFixed(1);
        pen = true;
      }
      var name = c.legend ? c.legend[k - 1] : (nLines > 1 ? "seed " + (k - 1) : c.name);
      var path = sv("path", { d: d, fill: "none", stroke: PALETTE[(k - 1) % PALETTE.length], "stroke-width": 1.5 });
      path.appendChild(sv("title", null, name));
      svg.appendChild(path);
      if (c.legend || nLines > 1) {
        svg.appendChild(sv("text", { x: L + 6, y: T + 12 * k, fill: PALETTE[(k - 1) % PALETTE.length] }, name));
      }
    }
    container.appendChild(svg);
  }

  // ---------------------------------------------------------------- attention examples
  function attentionView(container, ex, mat) {
    var box = el("div", { "class": "attn-example" });
    box.appendChild(el("h4", null, ex.name));
    if (ex.text) { box.appendChild(el("div", { "class": "prompt" }, ex.text)); }
    var readout = el("div", { "class": "readout" }, "hover a token: its row of attention colours the tokens it attends to");
    var strip = el("div", { "class": "tokens" });
    var spans = [];
    var n = Math.min(ex.tokens.length, mat.length);
    ex.tokens.slice(0, Math.max(n, mat.length ? n : ex.tokens.length)).forEach(function (tok, i) {
      var s = el("span", { "class": "tok", "data-q": i }, tok === "" ? "∅" : tok);
      spans.push(s);
      strip.appendChild(s);
    });
    function highlight(q) {
      var row = mat[q] || [];
      var best = [];
      spans.forEach(function (s, k) {
        var w = row[k];
        s.classList.toggle("query", k === q);
        if (w !== null && w !== undefined && isFinite(w)) {
          s.style.background = "rgba(214,39,40," + Math.min(1, w * 0.9 + (w > 0.01 ? 0.05 : 0)).toFixed(3) + ")";
          s.title = "weight " + fmt(w);
          best.push([w, k]);
        } else { s.style.background = ""; s.title = ""; }
      });
      best.sort(function (a, b) { return b[0] - a[0]; });
      readout.textContent = "query " + q + " " + JSON.stringify(ex.tokens[q]) + " attends to: " + best.slice(0, 4).map(function (b) {
        return JSON.stringify(ex.tokens[b[1]]) + "@" + b[1] + " " + fmt(b[0]); }).join(", ");
    }
    strip.addEventListener("mouseover", function (evt) {
      var t = evt.target;
      if (t && t.getAttribute && t.getAttribute("data-q") !== null) { highlight(+t.getAttribute("data-q")); }
    });
    box.appendChild(strip);
    box.appendChild(readout);
    var labels = ex.tokens.slice(0, mat.length).map(function (t, i) { return i + " " + (t.length > 10 ? t.slice(0, 9) + "…" : t); });
    var z = mat.map(function (row) { var r = row.slice(); while (r.length < mat.length) { r.push(null); } return r; });
    var hm = el("div", { "class": "attn-matrix" });
    heatmap(hm, z, { rowLabels: labels, colLabels: mat.map(function (_, i) { return i; }), rowName: "query", colName: "key",
      left: 96, cell: Math.max(6, Math.min(14, Math.floor(520 / Math.max(1, mat.length)))), noRank: true,
      tipText: function (q, k, v) { return "query " + q + " " + JSON.stringify(ex.tokens[q]) + " → key " + k + " " + JSON.stringify(ex.tokens[k]) + "\nweight " + fmt(v); } });
    box.appendChild(hm);
    container.appendChild(box);
  }

  // ---------------------------------------------------------------- head page
  function headPage(hid) {
    var view = document.getElementById("head-view"), main = document.getElementById("main");
    if (!view || !main) { return; }
    var m = /^L(\d+)H(\d+)$/.exec(hid);
    view.textContent = "";
    if (!m || +m[1] >= D.n_layers || +m[2] >= D.n_heads) {
      view.appendChild(el("p", null, "no head " + hid + " in this model"));
    } else {
      var l = +m[1], h = +m[2];
      var nav = el("p");
      var back = el("a", { href: "#overview", "class": "back" }, "← back to the overview");
      nav.appendChild(back);
      var prev = h > 0 ? "L" + l + "H" + (h - 1) : (l > 0 ? "L" + (l - 1) + "H" + (D.n_heads - 1) : null);
      var next = h < D.n_heads - 1 ? "L" + l + "H" + (h + 1) : (l < D.n_layers - 1 ? "L" + (l + 1) + "H0" : null);
      if (prev) { nav.appendChild(document.createTextNode("   ")); nav.appendChild(el("a", { href: "#head/" + prev }, "‹ " + prev)); }
      if (next) { nav.appendChild(document.createTextNode("   ")); nav.appendChild(el("a", { href: "#head/" + next }, next + " ›")); }
      view.appendChild(nav);
      var role = D.roles[hid];
      var title = el("h2", { id: "head-title" }, "Head " + hid + (role ? " — " + role.head_type : ""));
      view.appendChild(title);
      view.appendChild(el("p", { "class": "muted" }, D.model + " · layer " + l + ", head " + h));

      var labels = D.labels[hid] || [];
      view.appendChild(el("h3", null, "Labels"));
      if (!labels.length) { view.appendChild(el("p", { "class": "muted" }, "no method labelled this head")); }
      else {
        var lt = el("table", { "class": "head-labels" });
        var hr = el("tr");
        ["head type", "stage", "method", "value", "threshold", "note"].forEach(function (c) { hr.appendChild(el("th", null, c)); });
        lt.appendChild(hr);
        labels.forEach(function (d) {
          var tr = el("tr");
          tr.appendChild(el("td", null, d.head_type));
          tr.appendChild(el("td", null, d.stage || "–"));
          tr.appendChild(el("td", null, d.method + " (" + d.kind + ", run " + d.run + ")"));
          tr.appendChild(el("td", { "class": "num" }, fmt(d.value)));
          tr.appendChild(el("td", { "class": "num" }, fmt(d.threshold)));
          tr.appendChild(el("td", null, d.note || ""));
          lt.appendChild(tr);
        });
        view.appendChild(lt);
      }

      view.appendChild(el("h3", null, "Attention on example prompts"));
      var pats = D.attn && D.attn.patterns ? D.attn.patterns[hid] : null;
      var shown = 0;
      if (pats) {
        pats.forEach(function (mat, e) {
          var ex = D.attn.examples[e];
          if (mat && ex) { attentionView(view, ex, mat); shown++; }
        });
      }
      if (!shown) {
        view.appendChild(el("p", { "class": "muted" }, D.attn && D.attn.examples ?
          "the scan stored no attention example for this head (it stores them for the top heads)" :
          "this atlas holds no attention examples (artifact attn_examples)"));
      }
      view.appendChild(el("h3", null, "Scores of every method"));
      var st = el("table", { "class": "head-scores" });
      var sh = el("tr");
      ["method · metric", "kind", "run", "value", "rank (1 = highest)", "percentile"].forEach(function (c) { sh.appendChild(el("th", null, c)); });
      st.appendChild(sh);
      (D.series || []).forEach(function (s) {
        var v = s.z[l] ? s.z[l][h] : null;
        var sorted = ranks(s.z), r = rankOf(sorted, v);
        var tr = el("tr");
        tr.appendChild(el("td", null, s.label));
        tr.appendChild(el("td", null, s.kind));
        tr.appendChild(el("td", { "class": "num" }, s.run));
        var vt = fmt(v);
        if (s.se && s.se[l] && s.se[l][h] !== null) { vt += " ± " + fmt(s.se[l][h]); }
        tr.appendChild(el("td", { "class": "num" }, vt));
        tr.appendChild(el("td", { "class": "num" }, r === null ? "–" : r + " / " + sorted.length));
        var pc = el("td");
        if (r !== null) {
          var p = sorted.length > 1 ? 1 - (r - 1) / (sorted.length - 1) : 1;
          pc.appendChild(el("span", { "class": "bar", style: "width:" + Math.round(p * 80) + "px" }));
          pc.appendChild(document.createTextNode(" " + Math.round(p * 100) + "%"));
        }
        tr.appendChild(pc);
        st.appendChild(tr);
      });
      view.appendChild(st);

      var types = [];
      labels.forEach(function (d) { if (types.indexOf(d.head_type) < 0 && D.papers[d.head_type]) { types.push(d.head_type); } });
      view.appendChild(el("h3", null, "Papers on its head types"));
      if (!types.length) { view.appendChild(el("p", { "class": "muted" }, "no catalogued head type labelled here")); }
      types.forEach(function (t) {
        var det = el("details", types.length === 1 && D.papers[t].length <= 6 ? { open: "" } : null);
        det.appendChild(el("summary", null, t + " — " + D.papers[t].length + " paper(s)"));
        var ul = el("ul", { "class": "papers" });
        D.papers[t].forEach(function (p) {
          var li = el("li");
          if (p.url) { li.appendChild(el("a", { href: p.url, rel: "noreferrer noopener", target: "_blank" }, p.title)); }
          else { li.appendChild(document.createTextNode(p.title)); }
          li.appendChild(document.createTextNode(" (" + p.date + ") — " + (p.summary || "")));
          ul.appendChild(li);
        });
        det.appendChild(ul);
        view.appendChild(det);
      });

    }
    main.hidden = true;
    view.hidden = false;
    window.scrollTo(0, 0);
  }

  function route() {
    var h = decodeURIComponent(location.hash || "");
    var view = document.getElementById("head-view"), main = document.getElementById("main");
    if (h.indexOf("#head/") === 0 && view) { headPage(h.slice(6)); return; }
    if (view && main && main.hidden) {
      view.hidden = true; main.hidden = false;
      var target = h ? document.getElementById(h.slice(1)) : null;
      if (target) { target.scrollIntoView(); } else { window.scrollTo(0, 0); }
    }
  }

  // ---------------------------------------------------------------- wire up
  function init() {
    var byKey = seriesMap(D.series);
    var rowLabels = null;
    document.querySelectorAll("div.heatmap[data-series]").forEach(function (div) {
      var s = byKey[div.getAttribute("data-series")];
      if (s) { heatmap(div, s.z, { tipText: seriesTip(s), onClick: goHead, rowLabels: rowLabels }); }
    });
    // comparison pages: data-side = a | b | diff
    document.querySelectorAll("div.heatmap[data-side]").forEach(function (div) {
      var side = D[div.getAttribute("data-side")];
      var s = side ? seriesMap(side.series)[div.getAttribute("data-key")] : null;
      if (s) { heatmap(div, s.z, { tipText: seriesTip(s) }); }
    });
    document.querySelectorAll("div.curve[data-curve]").forEach(function (div) {
      var c = (D.curves || [])[+div.getAttribute("data-curve")];
      if (c) { lineChart(div, c); }
    });
    window.addEventListener("hashchange", route);
    route();
    document.body.setAttribute("data-ready", "1");
  }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", init); } else { init(); }
})();
