(function () {
  "use strict";
  // headmine report, shared helpers. Data comes from the JSON block #hm-data and enters the DOM
  // through textContent / setAttribute only (never as markup), so atlas strings render as text.
  var HM = window.HM = window.HM || {};
  var SVGNS = "http://www.w3.org/2000/svg";
  var dataEl = document.getElementById("hm-data");
  HM.D = dataEl ? JSON.parse(dataEl.textContent) : {};
  var tip = document.getElementById("tooltip");

  function setAttrs(e, attrs) {
    if (attrs) { for (var k in attrs) { if (Object.prototype.hasOwnProperty.call(attrs, k)) { e.setAttribute(k, attrs[k]); } } }
  }
  HM.el = function (tag, attrs, text) {
    var e = document.createElement(tag);
    setAttrs(e, attrs);
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    return e;
  };
  HM.sv = function (tag, attrs, text) {
    var e = document.createElementNS(SVGNS, tag);
    setAttrs(e, attrs);
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    return e;
  };
  HM.finite = function (v) { return v !== null && v !== undefined && typeof v === "number" && isFinite(v); };
  HM.fmt = function (v, digits) {
    if (!HM.finite(v)) { return "–"; }
    var a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) { return v.toExponential(2); }
    return String(Number(v.toPrecision(digits || 4)));
  };

  // ---------------------------------------------------------------- tooltip
  HM.showTipAt = function (text, x, y) {
    if (!tip) { return; }
    tip.textContent = text;
    tip.hidden = false;
    var w = tip.offsetWidth, h = tip.offsetHeight;
    if (x + w > window.innerWidth - 4) { x = Math.max(4, window.innerWidth - w - 4); }
    if (y + h > window.innerHeight - 4) { y = Math.max(4, y - h - 28); }
    tip.style.left = x + "px";
    tip.style.top = y + "px";
  };
  HM.showTip = function (text, evt) { HM.showTipAt(text, evt.clientX + 14, evt.clientY + 14); };
  HM.hideTip = function () { if (tip) { tip.hidden = true; } };

  // ---------------------------------------------------------------- meaning, importance, ranks
  // one convention everywhere (as report/meaning.py): importance = sign * value (|value| when the
  // sign is unknown); effects rank by |value|, scores by importance; rank 1 = most important, ties
  // share the best rank, percentile = middle of the tie group
  HM.importance = function (v, sign) { return sign ? sign * v : Math.abs(v); };
  HM.rankKey = function (v, sign, byAbs) { return byAbs ? Math.abs(v) : HM.importance(v, sign); };
  HM.rankInfo = function (z, sign, l, h, byAbs) {
    var v = z[l] ? z[l][h] : null;
    if (!HM.finite(v)) { return null; }
    var me = HM.rankKey(v, sign, byAbs), above = 0, below = 0, n = 0;
    for (var i = 0; i < z.length; i++) {
      for (var j = 0; j < z[i].length; j++) {
        var x = z[i][j];
        if (!HM.finite(x)) { continue; }
        x = HM.rankKey(x, sign, byAbs);
        n++;
        if (x > me) { above++; } else if (x < me) { below++; }
      }
    }
    var ties = n - above - below;
    return { rank: above + 1, n: n, tied: ties - 1, pct: n > 1 ? 100 * (below + 0.5 * (ties - 1)) / (n - 1) : 100 };
  };
  HM.rankText = function (r, byAbs) {
    if (!r) { return "not ranked"; }
    return "rank " + r.rank + " of " + r.n + (byAbs ? " by |value|" : "") + (r.tied > 0 ? " (tied with " + r.tied + ")" : "") +
      " · " + HM.ordinal(Math.round(r.pct)) + " percentile";
  };
  HM.ordinal = function (n) {
    var s = ["th", "st", "nd", "rd"], v = n % 100;
    return n + (s[(v - 20) % 10] || s[v] || s[0]);
  };
  HM.describe = function (m, v) {
    if (!HM.finite(v)) { return "not measured"; }
    if (!m) { return HM.fmt(v); }
    return (v >= 0 ? m.positive : m.negative).replace("{x}", HM.fmt(Math.abs(v), 3));
  };
  HM.seriesByKey = function () {
    var m = {};
    (HM.D.series || []).forEach(function (s) { m[s.key] = s; });
    return m;
  };
  HM.roleText = function (hid) {
    var r = HM.D.roles && HM.D.roles[hid];
    if (!r) { return ""; }
    return r.status === "confirmed" ? "role: " + r.head_type + " (confirmed)" : "evidence only: " + r.evidence.join(", ");
  };

  // ---------------------------------------------------------------- colours and ticks
  var SEQ = [[255, 255, 229], [199, 233, 180], [65, 182, 196], [34, 94, 168], [8, 29, 88]];
  var DIV = [[33, 102, 172], [146, 197, 222], [247, 247, 247], [244, 165, 130], [178, 24, 43]];
  function ramp(stops, t) {
    t = Math.max(0, Math.min(1, t));
    var x = t * (stops.length - 1), i = Math.min(stops.length - 2, Math.floor(x)), f = x - i;
    var a = stops[i], b = stops[i + 1];
    return "rgb(" + Math.round(a[0] + (b[0] - a[0]) * f) + "," + Math.round(a[1] + (b[1] - a[1]) * f) + "," + Math.round(a[2] + (b[2] - a[2]) * f) + ")";
  }
  HM.ramp = ramp;
  // a colour scale over [lo, hi] (zero always inside); diverging when it spans both signs
  HM.makeScale = function (lo, hi, unit, forceDiverging) {
    lo = Math.min(0, HM.finite(lo) ? lo : 0);
    hi = Math.max(0, HM.finite(hi) ? hi : 0);
    if (lo === 0 && hi === 0) { hi = 1; }
    var diverging = (lo < 0 && hi > 0) || !!forceDiverging;
    if (diverging) { var m = Math.max(-lo, hi); lo = -m; hi = m; }
    return {
      lo: lo, hi: hi, diverging: diverging, unit: unit || "",
      pos: function (v) { return (v - lo) / (hi - lo); },
      color: function (v) {
        if (diverging) { return ramp(DIV, (v - lo) / (hi - lo)); }
        return hi > 0 ? ramp(SEQ, (v - lo) / (hi - lo)) : ramp(SEQ, (hi - v) / (hi - lo));
      },
      stops: function (t) { return diverging ? ramp(DIV, t) : (hi > 0 ? ramp(SEQ, t) : ramp(SEQ, 1 - t)); }
    };
  };
  HM.ticks = function (lo, hi, count) {
    var span = hi - lo;
    if (!(span > 0)) { return [lo]; }
    var step = Math.pow(10, Math.floor(Math.log10(span / (count || 4))));
    var err = span / (count || 4) / step;
    if (err >= 7.5) { step *= 10; } else if (err >= 3.5) { step *= 5; } else if (err >= 1.5) { step *= 2; }
    var out = [];
    for (var v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) { out.push(Math.abs(v) < step * 1e-9 ? 0 : v); }
    if (out.indexOf(0) < 0 && lo <= 0 && hi >= 0) { out.push(0); out.sort(function (a, b) { return a - b; }); }
    return out;
  };
  HM.ownRange = function (z) {
    var lo = Infinity, hi = -Infinity;
    z.forEach(function (row) { row.forEach(function (v) { if (HM.finite(v)) { if (v < lo) { lo = v; } if (v > hi) { hi = v; } } }); });
    return lo === Infinity ? null : { min: lo, max: hi };
  };
})();
