(function () {
  "use strict";
  // wiring: draw every map on its shared scale, the curves, the jump-to-head box and the routing
  // between the overview and the head pages.
  var HM = window.HM, fmt = HM.fmt, D = HM.D;

  function goHead(l, h) { location.hash = "#head/L" + l + "H" + h; }

  function displayed(s, alignedView) {
    return alignedView ? s.z.map(function (row) { return row.map(function (v) { return HM.finite(v) ? HM.importance(v, s.sign) : null; }); }) : s.z;
  }

  function seriesTip(s, alignedView) {
    return function (l, h, v) {
      var raw = s.z[l] ? s.z[l][h] : null;
      var t = "L" + l + "H" + h + "  " + s.label + "\n" + HM.describe(s.meaning, raw);
      if (s.se && s.se[l] && HM.finite(s.se[l][h])) { t += " (± " + fmt(s.se[l][h]) + ")"; }
      if (s.n) { t += "  n=" + s.n; }
      if (alignedView && HM.finite(v)) { t += "\nimportance " + fmt(v, 3) + " (sign-aligned)"; }
      t += "\n" + HM.rankText(HM.rankInfo(s.z, s.sign, l, h, s.by_abs), s.by_abs);
      var role = HM.roleText("L" + l + "H" + h);
      if (role) { t += "\n" + role; }
      return t;
    };
  }

  function scaleOf(name) {
    var g = (D.scales || {})[name];
    if (!g) { return null; }
    var sc = HM.makeScale(g.lo, g.hi, g.unit + (g.aligned ? " (importance)" : ""), g.diverging);
    sc.shared = g.n_maps;
    return sc;
  }

  function drawMaps() {
    var byKey = HM.seriesByKey();
    document.querySelectorAll("div.heatmap[data-series]").forEach(function (div) {
      var key = div.getAttribute("data-series"), s = byKey[key];
      var compact = div.getAttribute("data-compact") === "1";
      var cell = compact ? Math.max(6, Math.min(16, Math.floor(150 / Math.max(1, (D.n_heads || 1))))) : null;
      if (s) {
        var al = div.getAttribute("data-aligned") === "1";
        HM.heatmap(div, displayed(s, al), { tipText: seriesTip(s, al), onClick: goHead, scale: scaleOf(s.scale),
          label: s.label, cell: cell, cellH: compact ? Math.max(5, Math.min(12, Math.floor(260 / Math.max(1, D.n_layers || 1)))) : null });
        return;
      }
      var m = (D.seed_maps || {})[key];
      if (m) {
        HM.heatmap(div, m.z, { scale: scaleOf(m.scale), onClick: goHead, label: m.label, cell: cell,
          tipText: function (l, h, v) { return "L" + l + "H" + h + "  " + m.label + "\nvalue " + fmt(v); } });
      }
    });
    // comparison pages: data-side = a | b | diff; A and B of one pair share a scale
    function sideSeries(div) {
      var side = D[div.getAttribute("data-side")], s = null;
      (side ? side.series : []).forEach(function (x) { if (x.key === div.getAttribute("data-key")) { s = x; } });
      return s;
    }
    var pairs = {};
    document.querySelectorAll("div.heatmap[data-pair]").forEach(function (div) {
      var s = sideSeries(div), r = s ? HM.ownRange(s.z) : null, p = div.getAttribute("data-pair");
      if (r) { pairs[p] = pairs[p] ? { min: Math.min(pairs[p].min, r.min), max: Math.max(pairs[p].max, r.max) } : r; }
    });
    document.querySelectorAll("div.heatmap[data-side]").forEach(function (div) {
      var s = sideSeries(div), p = pairs[div.getAttribute("data-pair")];
      if (s) {
        var sc = p ? HM.makeScale(p.min, p.max, s.meaning ? s.meaning.unit : "") : null;
        if (sc) { sc.shared = 2; }
        HM.heatmap(div, s.z, { label: s.label, scale: sc, tipText: function (l, h, v) { return "L" + l + "H" + h + "  " + s.label + "\nvalue " + fmt(v); } });
      }
    });
    document.querySelectorAll("div.curve[data-curve]").forEach(function (div) {
      var c = (D.curves || [])[+div.getAttribute("data-curve")];
      if (c) { HM.lineChart(div, c); }
    });
  }

  // "L23H3", "l23 h3", "23.3", "23,3", "23 3" -> L23H3
  function parseHead(text) {
    var m = /^\s*l?\s*(\d+)\s*(?:h|[.,:/ ]|\s)\s*(\d+)\s*$/i.exec(text || "");
    return m ? "L" + (+m[1]) + "H" + (+m[2]) : null;
  }

  function jumpBox() {
    var form = document.getElementById("jump"), input = document.getElementById("jump-input"), msg = document.getElementById("jump-msg");
    if (!form || !input) { return; }
    form.addEventListener("submit", function (evt) {
      evt.preventDefault();
      var hid = parseHead(input.value);
      var m = hid ? /^L(\d+)H(\d+)$/.exec(hid) : null;
      if (!m || +m[1] >= D.n_layers || +m[2] >= D.n_heads) {
        msg.textContent = "no such head (L0H0 to L" + (D.n_layers - 1) + "H" + (D.n_heads - 1) + ")";
        return;
      }
      msg.textContent = "";
      location.hash = "#head/" + hid;
    });
  }

  function route() {
    var h = decodeURIComponent(location.hash || "");
    var view = document.getElementById("head-view"), main = document.getElementById("main");
    if (h.indexOf("#head/") === 0 && view) { HM.headPage(h.slice(6)); return; }
    if (view && main && main.hidden) {
      view.hidden = true; main.hidden = false;
      var target = h ? document.getElementById(h.slice(1)) : null;
      if (target) { target.scrollIntoView(); } else { window.scrollTo(0, 0); }
    }
  }

  function init() {
    drawMaps();
    jumpBox();
    window.addEventListener("hashchange", route);
    route();
    document.body.setAttribute("data-ready", "1");
  }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", init); } else { init(); }
})();
