(function () {
  "use strict";
  // the head page (#head/L23H3): a summary (confirmed roles, evidence, task importance, tokens it
  // attends to), its labels, attention examples (final query preselected, first-token column
  // toggle), every score with its meaning, rank and percentile, and the papers on its types.
  var HM = window.HM, el = HM.el, fmt = HM.fmt, D = HM.D;
  var hideFirst = false;

  function topKeys(ex, mat, q, n) {
    var row = mat[q] || [], best = [];
    row.forEach(function (w, k) { if (HM.finite(w) && !(hideFirst && k === 0)) { best.push([w, k]); } });
    best.sort(function (a, b) { return b[0] - a[0]; });
    return best.slice(0, n).map(function (b) { return JSON.stringify(ex.tokens[b[1]]) + "@" + b[1] + " " + fmt(b[0], 3); }).join(", ");
  }

  function attentionView(container, ex, mat) {
    var box = el("div", { "class": "attn-example" });
    box.appendChild(el("h4", null, ex.name));
    if (ex.text) { box.appendChild(el("div", { "class": "prompt" }, ex.text)); }
    var readout = el("div", { "class": "readout" });
    var strip = el("div", { "class": "tokens" });
    var spans = [];
    ex.tokens.forEach(function (tok, i) {
      var s = el("span", { "class": "tok", "data-q": i, tabindex: i < mat.length ? 0 : -1 }, tok === "" ? "∅" : tok);
      spans.push(s);
      strip.appendChild(s);
    });
    var current = Math.min(ex.tokens.length, mat.length) - 1;  // the final query token, preselected
    function highlight(q) {
      current = q;
      var row = mat[q] || [];
      spans.forEach(function (s, k) {
        var w = row[k];
        s.classList.toggle("query", k === q);
        s.classList.toggle("first-hidden", hideFirst && k === 0);
        if (HM.finite(w) && !(hideFirst && k === 0)) {
          s.style.background = "rgba(214,39,40," + Math.min(1, w * 0.9 + (w > 0.01 ? 0.05 : 0)).toFixed(3) + ")";
          s.title = "weight " + fmt(w);
        } else { s.style.background = ""; s.title = ""; }
      });
      readout.textContent = "query " + q + " " + JSON.stringify(ex.tokens[q]) + " attends to: " + topKeys(ex, mat, q, 4) +
        "   (hover or focus another token to change the query)";
    }
    function pick(evt) {
      var t = evt.target;
      if (t && t.getAttribute && t.getAttribute("data-q") !== null && +t.getAttribute("data-q") < mat.length) { highlight(+t.getAttribute("data-q")); }
    }
    strip.addEventListener("mouseover", pick);
    strip.addEventListener("focusin", pick);
    box.appendChild(strip);
    box.appendChild(readout);
    var labels = ex.tokens.slice(0, mat.length).map(function (t, i) { return i + " " + (t.length > 10 ? t.slice(0, 9) + "…" : t); });
    var z = mat.map(function (row) {
      var r = row.slice();
      while (r.length < mat.length) { r.push(null); }
      if (hideFirst) { r[0] = null; }
      return r;
    });
    var hm = el("div", { "class": "attn-matrix" });
    HM.heatmap(hm, z, { rowLabels: labels, colLabels: mat.map(function (_, i) { return i; }), rowName: "query", colName: "key",
      left: 96, cell: Math.max(6, Math.min(14, Math.floor(520 / Math.max(1, mat.length)))), scale: HM.makeScale(0, 1, "attention weight"),
      label: "attention of " + ex.name,
      tipText: function (q, k, v) { return "query " + q + " " + JSON.stringify(ex.tokens[q]) + " → key " + k + " " + JSON.stringify(ex.tokens[k]) + "\nweight " + fmt(v); } });
    box.appendChild(hm);
    box.appendChild(el("p", { "class": "explain" }, "Rows: query position (the token attending), columns: key position (the token attended to); colour: attention weight, 0 to 1."));
    container.appendChild(box);
    if (current >= 0) { highlight(current); }
  }

  function summary(view, hid, l, h) {
    var ev = (D.evidence || {})[hid] || { confirmed: [], evidence: [] };
    var box = el("div", { "class": "head-summary", id: "head-summary" });
    box.appendChild(el("h3", null, "Summary"));
    var ul = el("ul");
    if (ev.confirmed.length) {
      ev.confirmed.forEach(function (c) {
        ul.appendChild(el("li", { "class": "confirmed" }, "Confirmed: " + c.head_type + " — " + c.method + " score " + fmt(c.value, 3) +
          " (threshold " + fmt(c.threshold) + "); its causal check passed" + (HM.finite(c.margin_z) ? ", " + fmt(c.margin_z, 3) + " sd above random heads" : "")));
      });
    } else {
      ul.appendChild(el("li", null, "No confirmed role."));
    }
    ev.evidence.forEach(function (e) {
      ul.appendChild(el("li", { "class": "evidence" }, "Evidence only: " + e.head_type + " — " + e.method + " " + fmt(e.value, 3) +
        (HM.finite(e.threshold) ? " (threshold " + fmt(e.threshold) + ")" : "") + "; " + e.status + (e.note ? " · " + e.note : "")));
    });
    var byKey = HM.seriesByKey();
    (D.tasks || []).forEach(function (t) {
      t.keys.forEach(function (k) {
        var s = byKey[k];
        if (!s) { return; }
        var v = s.z[l] ? s.z[l][h] : null;
        ul.appendChild(el("li", { "class": "task-importance" }, t.task + " · " + s.method + ": " + HM.describe(s.meaning, v) +
          (HM.finite(v) ? " — " + HM.rankText(HM.rankInfo(s.z, s.sign, l, h, s.by_abs), s.by_abs) : "")));
      });
    });
    var pats = D.attn && D.attn.patterns ? D.attn.patterns[hid] : null;
    (pats || []).forEach(function (mat, e) {
      var ex = D.attn.examples[e];
      if (mat && ex && mat.length) {
        ul.appendChild(el("li", null, "Attends most (" + ex.name + ", final token " + JSON.stringify(ex.tokens[mat.length - 1]) + "): " + topKeys(ex, mat, mat.length - 1, 3)));
      }
    });
    var prom = D.attn && D.attn.promotes ? D.attn.promotes[hid] : null, anyProm = false;
    (prom || []).forEach(function (toks, e) {
      var ex = D.attn.examples[e];
      if (toks && ex) {
        anyProm = true;
        ul.appendChild(el("li", { "class": "promotes" }, "Promotes (logit lens of its OV output at the final token of " + ex.name + "): " +
          toks.map(function (t) { return JSON.stringify(t); }).join(", ")));
      }
    });
    if (!anyProm) {
      ul.appendChild(el("li", { "class": "muted promotes" }, "Promoted tokens: not in this atlas for this head (no run stored the logit lens of its output)."));
    }
    box.appendChild(ul);
    view.appendChild(box);
  }

  function labelsTable(view, hid) {
    var ev = (D.evidence || {})[hid] || { confirmed: [], evidence: [] };
    var rows = ev.confirmed.concat(ev.evidence);
    view.appendChild(el("h3", null, "Labels"));
    if (!rows.length) { view.appendChild(el("p", { "class": "muted" }, "no method labelled this head")); return; }
    var lt = el("table", { "class": "head-labels" });
    var hr = el("tr");
    ["head type", "status", "method", "value", "threshold", "stage", "note"].forEach(function (c) { hr.appendChild(el("th", null, c)); });
    lt.appendChild(hr);
    rows.forEach(function (d) {
      var tr = el("tr", { "class": d.status === "confirmed" ? "confirmed" : "evidence" });
      tr.appendChild(el("td", null, d.head_type));
      tr.appendChild(el("td", null, d.status === "confirmed" ? "confirmed" : "evidence: " + d.status));
      tr.appendChild(el("td", null, d.method + " (" + d.kind + ", run " + d.run + ")"));
      tr.appendChild(el("td", { "class": "num" }, fmt(d.value)));
      tr.appendChild(el("td", { "class": "num" }, fmt(d.threshold)));
      tr.appendChild(el("td", null, d.stage || "–"));
      tr.appendChild(el("td", null, d.note || ""));
      lt.appendChild(tr);
    });
    view.appendChild(lt);
  }

  function attention(view, hid) {
    view.appendChild(el("h3", null, "Attention on example prompts"));
    var pats = D.attn && D.attn.patterns ? D.attn.patterns[hid] : null;
    var box = el("div", { "class": "attn-box" });
    var label = el("label", { "class": "toggle" });
    var cb = el("input", { type: "checkbox", id: "hide-first" });
    cb.checked = hideFirst;
    label.appendChild(cb);
    label.appendChild(document.createTextNode(" hide the first-token column (attention sinks)"));
    var shown = 0;
    function draw() {
      box.textContent = "";
      shown = 0;
      (pats || []).forEach(function (mat, e) {
        var ex = D.attn.examples[e];
        if (mat && ex) { attentionView(box, ex, mat); shown++; }
      });
    }
    cb.addEventListener("change", function () { hideFirst = cb.checked; draw(); });
    draw();
    if (shown) { view.appendChild(label); }
    view.appendChild(box);
    if (!shown) {
      var tops = (D.tops || {})[hid];
      var n = D.attn && D.attn.patterns ? Object.keys(D.attn.patterns).length : 0;
      view.appendChild(el("p", { "class": "muted", id: "attn-missing" }, (tops ? "This head is in the top 20 of " + tops.join(", ") + ", but " : "") +
        (D.attn && D.attn.examples ? "the atlas stores attention examples for " + n + " other heads, not this one (`headmine mine` stores every head in any method's top 20; an older or partial atlas holds the scan's top heads only)." :
          "this atlas holds no attention examples (artifact attn_examples).")));
    }
  }

  function scoresTable(view, l, h) {
    view.appendChild(el("h3", null, "Every score, with what it means"));
    view.appendChild(el("p", { "class": "explain" }, "Rank 1 = the most important head: effects on a task rank by |value| (a head that works against the answer matters too; the sign says which way), scores and gates by their value. Ties share a rank, and the percentile sits in the middle of the tie group."));
    var wrap = el("div", { "class": "scroll-x" });
    var st = el("table", { "class": "head-scores" });
    var sh = el("tr");
    ["score", "value", "meaning", "rank (1 = most important)", "percentile"].forEach(function (c) { sh.appendChild(el("th", null, c)); });
    st.appendChild(sh);
    (D.series || []).forEach(function (s) {
      var v = s.z[l] ? s.z[l][h] : null;
      var r = HM.rankInfo(s.z, s.sign, l, h, s.by_abs);
      var tr = el("tr", { "data-key": s.key });
      tr.appendChild(el("td", null, s.label + " · run " + s.run));
      var vt = fmt(v);
      if (s.se && s.se[l] && HM.finite(s.se[l][h])) { vt += " ± " + fmt(s.se[l][h]); }
      tr.appendChild(el("td", { "class": "num" }, vt));
      tr.appendChild(el("td", { "class": "meaning", title: s.meaning ? s.meaning.quantity + "; " + s.meaning.importance : "" }, HM.describe(s.meaning, v)));
      tr.appendChild(el("td", { "class": "num rank" }, r ? r.rank + " / " + r.n + (r.tied > 0 ? " (tied with " + r.tied + ")" : "") : "–"));
      var pc = el("td", { "class": "pct" });
      if (r) {
        pc.appendChild(el("span", { "class": "bar", style: "width:" + Math.round(r.pct * 0.8) + "px" }));
        pc.appendChild(document.createTextNode(" " + HM.ordinal(Math.round(r.pct))));
      }
      tr.appendChild(pc);
      st.appendChild(tr);
    });
    wrap.appendChild(st);
    view.appendChild(wrap);
  }

  function papers(view, hid) {
    var types = [];
    ((D.evidence || {})[hid] ? D.evidence[hid].confirmed.concat(D.evidence[hid].evidence) : []).forEach(function (d) {
      if (types.indexOf(d.head_type) < 0 && D.papers[d.head_type]) { types.push(d.head_type); }
    });
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

  HM.headPage = function (hid) {
    var view = document.getElementById("head-view"), main = document.getElementById("main");
    if (!view || !main) { return; }
    var m = /^L(\d+)H(\d+)$/.exec(hid);
    view.textContent = "";
    if (!m || +m[1] >= D.n_layers || +m[2] >= D.n_heads) {
      view.appendChild(el("p", null, "no head " + hid + " in this model"));
    } else {
      var l = +m[1], h = +m[2];
      var nav = el("p");
      nav.appendChild(el("a", { href: "#overview", "class": "back" }, "← back to the overview"));
      var prev = h > 0 ? "L" + l + "H" + (h - 1) : (l > 0 ? "L" + (l - 1) + "H" + (D.n_heads - 1) : null);
      var next = h < D.n_heads - 1 ? "L" + l + "H" + (h + 1) : (l < D.n_layers - 1 ? "L" + (l + 1) + "H0" : null);
      if (prev) { nav.appendChild(document.createTextNode("   ")); nav.appendChild(el("a", { href: "#head/" + prev }, "‹ " + prev)); }
      if (next) { nav.appendChild(document.createTextNode("   ")); nav.appendChild(el("a", { href: "#head/" + next }, next + " ›")); }
      view.appendChild(nav);
      var ev = (D.evidence || {})[hid];
      var head = ev && ev.headline;
      view.appendChild(el("h2", { id: "head-title" }, "Head " + hid + " — " + (head ? head.head_type + " (confirmed)" : "no confirmed role")));
      view.appendChild(el("p", { "class": "muted" }, D.model + " · layer " + l + ", head " + h));
      summary(view, hid, l, h);
      labelsTable(view, hid);
      attention(view, hid);
      scoresTable(view, l, h);
      papers(view, hid);
    }
    main.hidden = true;
    view.hidden = false;
    window.scrollTo(0, 0);
  };
})();
