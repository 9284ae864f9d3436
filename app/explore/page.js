() => {
  /* archplay's page script: the Explore tab's redraws, in the browser.

     A Run ships a payload (app/explore/payload.py): the logits row of the shown position, every
     attention map of the shown kind, the masks' rules, Δ per layer, and the figures' base layouts.
     From it this script recomputes and redraws the distribution (temperature, top-k, top-p), the
     attention heatmap, the grid's frame, the mask and Δ (layer, head), and draws samples, with no
     request to the server. The sampling stages are those of archplay.models.sampling
     .staged_distribution, in float32 where torch is (a browser test compares the two).

     Also here: the page's state in the address (model, text, settings), plots that follow the
     light/dark theme, export buttons (interactive HTML, SVG, PNG) on every plot, and clicks on the
     grid's thumbnails choosing a layer and head. */
  const AP = (window.archplay = window.archplay || {});
  if (AP.started) return;
  AP.started = true;

  // ------------------------------------------------------------------ decoding what the Run shipped
  const bytes = (b64) => {
    const s = atob(b64), out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  };
  const f32 = (b64) => new Float32Array(bytes(b64).buffer);
  let HALF = null; // float16 bit pattern -> value, built once
  const halfTable = () => {
    if (HALF) return HALF;
    HALF = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) {
      const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, m = h & 0x3ff;
      HALF[h] = e === 0 ? s * m * 2 ** -24 : e === 31 ? (m ? NaN : s * Infinity) : s * (1 + m / 1024) * 2 ** (e - 15);
    }
    return HALF;
  };
  const f16 = (b64) => {
    const u = new Uint16Array(bytes(b64).buffer), t = halfTable(), out = new Float32Array(u.length);
    for (let i = 0; i < u.length; i++) out[i] = t[u[i]];
    return out;
  };
  const fround = Math.fround;

  // ------------------------------------------------------------------ the sampling stages
  const MIN_TEMPERATURE = 1e-4; // archplay.models.sampling.MIN_TEMPERATURE: below it, greedy

  /* Token ids ordered by logit, largest first, ties by smaller id (the order of every stage:
     dividing by a temperature keeps it). Sorted once per logits row. */
  AP.order = (logits) => {
    const idx = new Uint32Array(logits.length);
    for (let i = 0; i < idx.length; i++) idx[i] = i;
    return idx.sort((a, b) => logits[b] - logits[a] || a - b);
  };

  const softmax = (scores, kept) => {
    let max = -Infinity;
    for (let i = 0; i < scores.length; i++) if ((!kept || kept[i]) && scores[i] > max) max = scores[i];
    const out = new Float64Array(scores.length);
    let sum = 0;
    for (let i = 0; i < scores.length; i++) {
      if (kept && !kept[i]) continue;
      const e = Math.exp(scores[i] - max);
      out[i] = e;
      sum += e;
    }
    for (let i = 0; i < out.length; i++) out[i] /= sum;
    return out;
  };
  const entropy = (p) => {
    let h = 0;
    for (let i = 0; i < p.length; i++) if (p[i] > 0) h -= p[i] * Math.log(p[i]);
    return h;
  };

  /* staged_distribution(logits, temperature, top_k, top_p): raw, tempered, final, kept, and the
     settings as applied. Same order and meaning as transformers' warpers; see models/sampling.py. */
  AP.staged = (logits, temperature, topK, topP, order) => {
    const V = logits.length;
    order = order || AP.order(logits);
    let max = -Infinity;
    for (let i = 0; i < V; i++) {
      if (Number.isNaN(logits[i])) throw new Error("the model produced NaN logits");
      if (logits[i] > max) max = logits[i];
    }
    const shifted = new Float32Array(V);
    for (let i = 0; i < V; i++) shifted[i] = fround(logits[i] - max);
    const raw = softmax(shifted);
    const kept = new Uint8Array(V);
    if (temperature < MIN_TEMPERATURE) { // greedy: all mass on the argmax (the first, on ties)
      const onehot = new Float64Array(V);
      onehot[order[0]] = 1;
      kept[order[0]] = 1;
      return {raw, tempered: onehot, final: onehot, kept, temperature: 0, topK, topP, order, nKept: 1, vocab: V, asked: temperature};
    }
    const t = fround(temperature), scores = new Float32Array(V);
    for (let i = 0; i < V; i++) {
      scores[i] = fround(shifted[i] / t);
      kept[i] = Number.isFinite(scores[i]) ? 1 : 0;
    }
    const tempered = softmax(scores);
    if (topK > 0 && topK < V) { // keep scores >= the k-th largest (ties at the boundary stay)
      const kth = scores[order[topK - 1]];
      for (let i = 0; i < V; i++) if (scores[i] < kth) kept[i] = 0;
    }
    if (topP < 1) { // ascending cumulative mass of the kept; drop while it is <= 1 - p, never the best
      const masked = softmax(scores, kept), limit = fround(1 - topP);
      let cum = 0;
      const drop = [];
      for (let r = V - 1; r >= 0; r--) {
        const id = order[r];
        cum += masked[id];
        if (r > 0 && cum <= limit) drop.push(id);
      }
      for (const id of drop) kept[id] = 0;
    }
    const final = softmax(scores, kept);
    let nKept = 0;
    for (let i = 0; i < V; i++) nKept += kept[i];
    return {raw, tempered, final, kept, temperature: temperature, topK, topP, order, nKept, vocab: V, asked: temperature};
  };

  // ------------------------------------------------------------------ text helpers
  const esc = (s) => String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  const unesc = (s) => String(s).replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&amp;/g, "&");
  /* app.messages.md_escape: shown literally inside one markdown line */
  const md = (s) => esc(s).replace(/([\\`*|~\[\]])/g, "\\$1").replace(/:(?=\/\/)|(?<=\bwww)\.|@/gi, (m) => "\\" + m);
  const quote = (label) => `‘${md(label)}’`;
  const pct = (x) => `${(100 * x).toFixed(1)}%`;
  const thousands = (n, sep) => String(n).replace(/\B(?=(\d{3})+(?!\d))/g, sep);
  const shortLabel = (s, limit) => (s.length <= limit ? s : s.slice(0, limit - 1) + "…");
  const rgba = (hex, a) => `rgba(${parseInt(hex.slice(1, 3), 16)},${parseInt(hex.slice(3, 5), 16)},${parseInt(hex.slice(5, 7), 16)},${a})`;
  const clone = (x) => JSON.parse(JSON.stringify(x));

  // ------------------------------------------------------------------ drawing
  const plotDiv = (id) => document.querySelector(`#${id} .js-plotly-plot`);
  const DARK = () => document.body.classList.contains("dark") || document.documentElement.classList.contains("dark");

  /* The figure in the page's theme: the dark theme's paper, ink and grid lines. */
  AP.themed = (layout) => {
    if (!DARK()) return layout;
    const ink = "#e5e7eb", grid = "#374151";
    const out = Object.assign({}, layout, {paper_bgcolor: "#111827", plot_bgcolor: "#1f2937"});
    out.font = Object.assign({}, layout.font || {}, {color: ink});
    for (const key of Object.keys(layout)) {
      if (/^[xy]axis\d*$/.test(key)) out[key] = Object.assign({}, layout[key], {gridcolor: grid, linecolor: grid, zerolinecolor: grid});
    }
    return out;
  };
  /* Redraw the plot ``id`` in place (Plotly.react, keeping the config Gradio gave it: a different
     one would make every redraw a new plot); returns false when it is not on the page yet. */
  const react = (id, fig) => {
    const gd = plotDiv(id);
    if (!gd || !window.Plotly) return false;
    const moved = id === "distribution-plot" && gd.querySelector(".annotation[transform]");
    if (moved) moved.removeAttribute("transform"); // a draft's shift of the top-p label
    window.Plotly.react(gd, fig.data, AP.themed(fig.layout));
    return true;
  };

  /* ------------------------------------------------------------------ quick drafts while a slider moves
     A full Plotly redraw takes 50-90 ms on a small machine: longer than a frame, so a drag would
     stutter. While the moves come, each is drawn as a draft: the distribution's bars, markers, lines
     and labels set in the shown picture directly (no Plotly call); a heatmap's picture repainted from
     the map (the same colour scale Plotly uses). When the moves pause (SETTLE ms), the full figure is
     drawn: hover texts, axis range, legend, colour bar. A draft is only made when the shown picture
     has its shape (the same Run, position, kind and shown tokens), else the full redraw comes at once. */
  const SETTLE = 150;
  const settle = {};
  const later = (id, fig) => {
    clearTimeout(settle[id]);
    settle[id] = setTimeout(() => react(id, fig), SETTLE);
  };
  /* A draft's title: the text of the shown title's lines replaced (a relayout would cost a redraw);
     the main line and the subtitle (``<br><sup>…</sup>``) keep their places and styles. The figure's
     layout keeps the full redraw's title: it says what the figure's data hold. */
  const setTitle = (gd, text) => {
    if (!gd.layout.title) return;
    const el = gd.querySelector(".gtitle"), parts = text.split("<br>").map((t) => unesc(t.replace(/<[^>]*>/g, "")));
    const lines = el ? el.querySelectorAll(":scope > tspan.line") : [];
    if (el && lines.length === parts.length && parts.length > 1) {
      lines.forEach((line, i) => ((line.querySelector("tspan") || line).textContent = parts[i]));
    } else if (el && parts.length === 1 && !el.querySelector("tspan")) {
      el.textContent = parts[0];
    } else {
      window.Plotly.relayout(gd, {"title.text": text});
    }
  };

  /* The distribution as a draft, drawn straight into the shown picture: each bar's height and colour,
     each marker's place, the cumulative and threshold lines, the top-p label and the title. Plotly
     is not called (its quickest redraw, an animation frame of the bars, took 40-90 ms here). False
     when the shown figure has another shape (other tokens, no picture yet): then Plotly draws it. Bars taller than the shown axis are cut at its top until the full
     redraw, SETTLE ms after the moves pause, fits the axis to them. */
  const draftDistribution = (fig) => {
    const gd = plotDiv("distribution-plot"), full = gd && gd._fullLayout;
    if (!full || !full.xaxis || !full.yaxis || !full.yaxis2 || !gd.data || !gd.calcdata) return false;
    if (gd.data.length !== fig.data.length || gd.calcdata.length !== fig.data.length) return false;
    const groups = {};
    gd.querySelectorAll(".barlayer .trace, .scatterlayer .trace").forEach((g) => {
      const cd = g.__data__, t = cd && cd[0] && cd[0].trace;
      if (t) groups[t.index] = g;
    });
    const same = (a, b) => a && b && a.length === b.length && Array.prototype.every.call(a, (v, j) => +v === +b[j]);
    // the kept and removed markers may trade points (a move that keeps more or fewer tokens): a
    // marker trace may change its length if a point of it is shown to copy
    const markersOnly = (t) => t.type === "scatter" && t.mode === "markers";
    const parts = fig.data.map((t, i) => {
      const g = groups[i], n = t.x.length;
      if (!markersOnly(t) && !same(t.x, gd.data[i].x)) return null;
      if (!n) return {t, g, points: g ? g.querySelectorAll(".point") : []};
      if (!g) return null;
      const points = g.querySelectorAll(t.type === "bar" ? ".point path" : ".point");
      if (t.type === "bar" && (points.length !== n || gd.calcdata[i].length !== n)) return null;
      if (/markers/.test(t.mode) && points.length !== n && !(markersOnly(t) && points.length)) return null;
      return {t, g, points, cd: gd.calcdata[i], y: t.yaxis === "y2" ? full.yaxis2 : full.yaxis};
    });
    if (parts.includes(null)) return false;
    const xa = full.xaxis, px = (v) => +v.toFixed(2);
    parts.forEach(({t, g, points, cd, y}) => {
      if (!g || (!t.x.length && !points.length)) return;
      if (t.type === "bar") {
        const base = px(y.c2p(0)), colours = t.marker.color;
        points.forEach((p, j) => {
          const x0 = px(xa.c2p(cd[j].p0)), x1 = px(xa.c2p(cd[j].p1)), top = px(y.c2p(Math.max(0, t.y[j])));
          p.setAttribute("d", `M${x0},${base}V${top}H${x1}V${base}Z`);
          p.style.fill = Array.isArray(colours) ? colours[j] : colours;
        });
        return;
      }
      const at = Array.from(t.x, (x, j) => [px(xa.c2p(x)), px(y.c2p(t.y[j]))]);
      let shown = Array.from(points);
      if (/markers/.test(t.mode) && shown.length !== at.length) {
        shown.slice(at.length).forEach((p) => p.remove());
        const copy = shown[0], parent = copy && copy.parentNode;
        while (copy && shown.length < at.length) shown.push(parent.appendChild(copy.cloneNode(true)));
        shown = shown.slice(0, at.length);
      }
      shown.forEach((p, j) => p.setAttribute("transform", `translate(${at[j][0]},${at[j][1]})`));
      const line = g.querySelector(".js-line");
      if (line && at.length) line.setAttribute("d", "M" + at.map((q) => q.join(",")).join("L"));
    });
    const note = (fig.layout.annotations || [])[0], shown = (gd.layout.annotations || [])[0];
    const label = gd.querySelector(".annotation");
    if (note && shown && label) {
      const dy = px(full.yaxis2.c2p(note.y) - full.yaxis2.c2p(shown.y));
      label.setAttribute("transform", `translate(0,${dy})`);
      const text = label.querySelector(".annotation-text");
      if (text && text.textContent !== note.text) text.textContent = note.text;
    }
    setTitle(gd, fig.layout.title.text);
    return true;
  };

  /* A heatmap's picture repainted from ``fig`` (same size and colour scale as the one shown); false
     when there is no such picture to repaint. */
  const draftHeatmap = (id, fig) => {
    const gd = plotDiv(id), image = gd && gd.querySelector(".hm image");
    const trace = fig.data[0], shown = gd && gd._fullData && gd._fullData[0];
    if (!image || !shown || shown.type !== "heatmap" || !trace.z.length) return false;
    const rows = trace.z, n = rows.length, m = rows[0].length;
    if (!shown.z || shown.z.length !== n || shown.z[0].length !== m || shown.zsmooth) return false;
    const scale = shown.colorscale.map(([t, c]) => [t, c.match(/[\d.]+/g).map(Number)]);
    const lo = trace.zmin, hi = trace.zmax, canvas = document.createElement("canvas");
    canvas.width = m;
    canvas.height = n;
    const ctx = canvas.getContext("2d"), img = ctx.createImageData(m, n);
    for (let r = 0; r < n; r++) {
      for (let c = 0; c < m; c++) {
        const t = Math.min(1, Math.max(0, (rows[r][c] - lo) / (hi - lo || 1)));
        let k = 1;
        while (k < scale.length - 1 && scale[k][0] < t) k++;
        const [t0, c0] = scale[k - 1], [t1, c1] = scale[k], f = t1 > t0 ? (t - t0) / (t1 - t0) : 0, at = 4 * (r * m + c);
        for (let j = 0; j < 3; j++) img.data[at + j] = Math.round(c0[j] + (c1[j] - c0[j]) * f);
        img.data[at + 3] = 255;
      }
    }
    ctx.putImageData(img, 0, 0);
    image.setAttribute("href", canvas.toDataURL());
    image.style.imageRendering = "pixelated";
    Object.assign(gd.data[0], {z: rows, zmax: trace.zmax}); // what the figure holds now (hover catches up at the full redraw)
    setTitle(gd, fig.layout.title.text);
    return true;
  };
  /* Typed arrays as plotly's compact {dtype, bdata[, shape]} (an array of equal typed rows as one
     2-D array): JSON would otherwise spell every float out, or turn a typed array into an object. */
  const DTYPES = [[Float32Array, "f4"], [Float64Array, "f8"], [Int8Array, "i1"], [Uint8Array, "u1"], [Int32Array, "i4"]];
  const b64 = (view) => {
    const u = new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
    let s = "";
    for (let i = 0; i < u.length; i += 0x8000) s += String.fromCharCode.apply(null, u.subarray(i, i + 0x8000));
    return btoa(s);
  };
  const typed = (v) => {
    const kind = DTYPES.find(([T]) => v instanceof T);
    return kind ? {dtype: kind[1], bdata: b64(v)} : null;
  };
  const compact = (key, v) => {
    if (ArrayBuffer.isView(v)) return typed(v) || Array.from(v);
    if (Array.isArray(v) && v.length && ArrayBuffer.isView(v[0]) && v.every((r) => r.constructor === v[0].constructor && r.length === v[0].length)) {
      const T = v[0].constructor, all = new T(v.length * v[0].length);
      v.forEach((r, i) => all.set(r, i * r.length));
      const spec = typed(all);
      if (spec) return Object.assign(spec, {shape: `${v.length},${v[0].length}`});
    }
    return v;
  };
  /* A figure as the value of a Gradio Plot (what a js event returns for it). */
  const plotValue = (fig) => (fig ? {type: "plotly", plot: JSON.stringify({data: fig.data, layout: AP.themed(fig.layout)}, compact)} : null);

  // ------------------------------------------------------------------ the Run's state on the page
  const S = (AP.state = {payload: null, vocab: null, row: null, attn: null, draws: 0});

  AP.setVocab = (vocab) => {
    if (vocab && vocab.labels) S.vocab = vocab;
  };

  const setRow = (dist) => {
    if (!dist || dist.message !== undefined) {
      S.row = dist ? {message: dist.message} : null;
      return;
    }
    const logits = f32(dist.logits);
    S.row = Object.assign({}, dist, {logits, order: AP.order(logits)});
  };

  AP.setRow = setRow;

  const setAttention = (attn) => {
    if (!attn) {
      S.attn = null;
      return;
    }
    const values = f16(attn.data), perMap = attn.lower ? (attn.nq * (attn.nq + 1)) / 2 : attn.nq * attn.nk;
    S.attn = Object.assign({}, attn, {values, perMap, maps: new Map(), hover: null});
  };

  /* One (layer, head) map as rows of a Float32Array, unpacking a lower-triangular one. */
  const map = (layer, head) => {
    const a = S.attn, key = `${layer},${head}`;
    if (a.maps.has(key)) return a.maps.get(key);
    const slot = a.layers.indexOf(layer);
    if (slot < 0) return null;
    const start = (slot * a.H + head) * a.perMap, rows = [];
    let at = start;
    for (let i = 0; i < a.nq; i++) {
      const row = new Float32Array(a.nk);
      const n = a.lower ? i + 1 : a.nk;
      row.set(a.values.subarray(at, at + n));
      at += n;
      rows.push(row);
    }
    a.maps.set(key, rows);
    return rows;
  };

  /* viz.attention.colour_top: the largest value, or the 99th percentile of the positive values
     outside the first column when there are enough of them. */
  AP.colourTop = (rows, quantile, minCells) => {
    let top = 0;
    const positive = [];
    for (const row of rows) {
      for (let j = 0; j < row.length; j++) {
        const v = row[j];
        if (Number.isFinite(v) && v > top) top = v;
        if (j > 0 && v > 0 && Number.isFinite(v)) positive.push(v);
      }
    }
    if (positive.length < minCells) return [top, false];
    const sorted = Float64Array.from(positive).sort();
    const pos = (sorted.length - 1) * quantile, lo = Math.floor(pos), hi = Math.ceil(pos);
    const cap = sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
    return cap > 0 && cap < top ? [cap, true] : [top, false];
  };
  const g3 = (x) => { // Python's format(x, ".3g") for the colour bar
    const s = Number(x).toPrecision(3);
    return s.includes("e") ? s : String(parseFloat(s));
  };

  const PAGE_TITLE_SIZE = 15; // half a page wide: a long title (T5's steps) and its settings line fit
  const PAGE_HEATMAP_HEIGHT = 520; // half a page wide, the square map needs less than the API's 620
  const fill = (pattern, values) => pattern.replace(/\{(\w+)\}/g, (m, k) => (k in values ? values[k] : m));

  AP.heatmap = (layer, head) => {
    const a = S.attn;
    if (!a) return null;
    const rows = map(layer, head);
    if (!rows) return null;
    const fig = clone(a.base), trace = fig.data[0];
    trace.z = rows;
    if ((trace.hovertemplate || "").includes("%{customdata}")) {
      if (!a.hover) a.hover = a.qlabels.map((q) => a.klabels.map((k) => `‘${q}’ → ‘${k}’`));
      trace.customdata = a.hover;
    }
    const [top, capped] = AP.colourTop(rows, a.cap.quantile, a.cap.min_cells);
    trace.zmin = 0;
    trace.zmax = top > 0 ? top : 1;
    const name = (trace.colorbar.title.text || "").split("<br>")[0];
    trace.colorbar.title.text = capped ? `${name}<br><sub>colour capped<br>at ${g3(top)} (99th<br>percentile)</sub>` : name;
    fig.layout.title.text = fill(a.titles ? a.titles[layer] : a.title, {layer, head}); // a hybrid: each layer's own
    fig.layout.height = PAGE_HEATMAP_HEIGHT;
    fig.layout.title.font = Object.assign({}, fig.layout.title.font, {size: PAGE_TITLE_SIZE});
    return fig;
  };

  /* viz.attention.downsample: block means so neither side exceeds ``cells``. */
  const edges = (n, cells) => {
    const out = [];
    for (let i = 0; i <= cells; i++) {
      const x = (i * n) / cells, f = Math.floor(x), d = x - f;
      out.push(d === 0.5 ? (f % 2 === 0 ? f : f + 1) : Math.round(x)); // numpy rounds half to even
    }
    return out;
  };
  const downsample = (rows, cells) => {
    const nr = rows.length, nc = rows[0].length;
    const re = nr > cells ? edges(nr, cells) : null, ce = nc > cells ? edges(nc, cells) : null;
    const out = [];
    const nOut = re ? cells : nr, mOut = ce ? cells : nc;
    for (let i = 0; i < nOut; i++) {
      const r0 = re ? re[i] : i, r1 = re ? re[i + 1] : i + 1, row = new Float32Array(mOut);
      for (let j = 0; j < mOut; j++) {
        const c0 = ce ? ce[j] : j, c1 = ce ? ce[j + 1] : j + 1;
        let sum = 0;
        for (let r = r0; r < r1; r++) for (let c = c0; c < c1; c++) sum += rows[r][c];
        row[j] = sum / ((r1 - r0) * (c1 - c0));
      }
      out.push(row);
    }
    return out;
  };

  AP.downsampled = downsample;

  AP.grid = (layer, head) => {
    const a = S.attn;
    if (!a || !a.grid) return null;
    if (!a.gridFig) {
      a.gridFig = clone(a.grid);
      if (a.layers.length === a.L) {
        a.gridFig.data.forEach((t, i) => (t.z = downsample(map(Math.floor(i / a.H), i % a.H), 32)));
      }
    }
    const fig = Object.assign({}, a.gridFig, {layout: Object.assign({}, a.gridFig.layout)});
    const i = layer * (a.scan ? 1 : a.H) + (a.scan ? 0 : head), trace = fig.data[i];
    if (!trace) return fig;
    const n = trace.xaxis.slice(1), gap = a.grid_gap;
    const xd = fig.layout[`xaxis${n}`].domain, yd = fig.layout[`yaxis${n}`].domain;
    const frame = (fig.layout.shapes && fig.layout.shapes[0]) || {type: "rect", xref: "paper", yref: "paper"};
    fig.layout.shapes = [Object.assign({}, frame, {x0: xd[0] - gap / 2, x1: xd[1] + gap / 2, y0: yd[0] - gap / 2, y1: yd[1] + gap / 2,
                                                   line: {color: S.payload.colours.chosen, width: 3}})];
    return fig;
  };

  AP.mask = (layer) => {
    const a = S.attn;
    if (!a) return [null, ""];
    const rule = a.masks[Math.min(layer, a.masks.length - 1)];
    const fig = clone(a.mask_base), rows = [];
    // the rules of archplay.models.architectures.layers.attention_mask (d = |q − k|, W the window)
    const causal = ["causal", "sliding", "strided", "block", "scan"].includes(rule.pattern), w = rule.window;
    const local = w ? ["sliding", "strided", "block"].find((p) => rule.pattern.endsWith(p)) : undefined;
    for (let q = 0; q < a.nq; q++) {
      const row = new Int8Array(a.nk);
      for (let k = 0; k < a.nk; k++) {
        const d = Math.abs(q - k);
        let ok = causal ? k <= q : true;
        if (local === "sliding") ok = ok && d < w;
        else if (local === "strided") ok = ok && (d < w || d % w === 0);
        else if (local === "block") ok = ok && Math.floor(q / w) === Math.floor(k / w);
        row[k] = ok ? 1 : 0;
      }
      rows.push(row);
    }
    fig.data[0].z = rows;
    fig.layout.title.text = rule.title;
    return [fig, rule.help];
  };

  AP.delta = (layer) => {
    const d = S.payload && S.payload.delta;
    if (!d) return null;
    if (!d.values) d.values = f32(d.data);
    const fig = clone(d.base);
    fig.data[0].y = d.values.subarray(layer * d.T, (layer + 1) * d.T);
    fig.layout.title.text = fill(d.titles ? d.titles[layer] : d.title, {layer}); // a hybrid: an attention layer has no Δ
    return fig;
  };

  // ------------------------------------------------------------------ the distribution figure
  AP.distribution = (temperature, topK, topP) => {
    const row = S.row, c = S.payload && S.payload.colours;
    if (!row || row.message !== undefined || !c) return [null, row ? row.message : ""];
    const st = AP.staged(row.logits, +temperature, Math.round(+topK), +topP, row.order);
    const ids = row.top.map((t) => t[0]), labels = row.top.map((t) => t[1]), n = ids.length;
    const pick = (arr) => ids.map((i) => arr[i]);
    const kept = ids.map((i) => st.kept[i] === 1);
    const raw = pick(st.raw), tempered = pick(st.tempered), final = pick(st.final);
    const ranks = ids.map((_, r) => r);
    const bar = (name, values, colour) => ({
      type: "bar", name, x: ranks, y: values,
      marker: {color: kept.map((k) => (k ? colour : rgba(colour, c.faded_alpha))), line: {width: 0}},
      customdata: ids.map((id, r) => [labels[r], id, kept[r] ? "kept" : "removed"]),
      hovertemplate: `<b>‘%{customdata[0]}’</b> · id %{customdata[1]}<br>${name}: %{y:.4f}<br>%{customdata[2]}<extra></extra>`,
    });
    const top = ranks.map((r) => Math.max(raw[r], tempered[r], final[r]));
    const topMax = n ? Math.max(...top) : 1;
    const markers = [["kept", true, "circle", c.kept], ["removed", false, "x-thin-open", c.removed]].map(([name, flag, symbol, colour]) => {
      const rs = ranks.filter((r) => kept[r] === flag);
      return {type: "scatter", name, x: rs, y: rs.map((r) => top[r] + 0.04 * topMax), mode: "markers",
              marker: {symbol, size: 8, color: colour, line: {width: 2, color: colour}}, customdata: rs.map((r) => labels[r]),
              hovertemplate: `‘%{customdata}’ ${name}<extra></extra>`};
    });
    let cum = 0;
    const cumulative = ranks.map((r) => (cum += st.tempered[st.order[r]]));
    const label = topP >= 1 ? "top-p off" : `top-p = ${(+topP).toFixed(2)}`;
    const traces = [
      bar("raw", raw, c.raw), bar("after temperature", tempered, c.tempered), bar("final", final, c.final), ...markers,
      {type: "scatter", name: "cumulative", x: ranks, y: cumulative, yaxis: "y2", mode: "lines+markers",
       line: {color: c.threshold, width: 2}, marker: {size: 4}, customdata: ranks.map((r) => r + 1),
       hovertemplate: "top %{customdata} tokens hold %{y:.4f}<extra>cumulative</extra>"},
      {type: "scatter", name: "top-p threshold", x: [-0.5, n - 0.5], y: [+topP, +topP], yaxis: "y2", mode: "lines",
       line: {color: c.threshold, width: 1.5, dash: "dash"}, hovertemplate: `${label}<extra></extra>`},
    ];
    const layout = clone(row.base.layout);
    const barTop = n ? Math.max(...raw, ...tempered, ...final) : 0;
    layout.yaxis.range = [0, barTop * 1.15 || 1.0];
    layout.annotations[0].y = +topP;
    layout.annotations[0].text = label;
    const t = st.temperature;
    const sub = [t === 0 ? "T=0 (greedy)" : `T=${t.toFixed(2)}`, st.topK > 0 ? `top-k ${st.topK}` : "top-k off",
                 topP < 1 ? `top-p ${(+topP).toFixed(2)}` : "top-p off",
                 `${thousands(st.nKept, " ")} of ${thousands(st.vocab, " ")} tokens kept`,
                 `entropy ${entropy(st.raw).toFixed(2)} → ${entropy(st.final).toFixed(2)} nats`].join(" · ");
    layout.title.text = `${row.title}<br><sup>${sub}</sup>`;
    layout.title.font = Object.assign({}, layout.title.font, {size: PAGE_TITLE_SIZE});
    return [{data: traces, layout}, summary(st, row)];
  };

  /* The note alone (for Gradio's js event; the figure is drawn on the next frame). */
  AP.note = (temperature, topK, topP) => {
    const row = S.row;
    if (!row || row.message !== undefined) return row ? row.message : "";
    return summary(AP.staged(row.logits, +temperature, Math.round(+topK), +topP, row.order), row);
  };

  /* The line under the distribution (app.explore.sampling.distribution's summary). */
  const summary = (st, row) => {
    const fin = st.final, bestFinal = st.order[0]; // the likeliest token is never filtered out
    const name = label(bestFinal);
    let s = `Most likely: ${quote(name)} at ${pct(fin[bestFinal])} (before sampling settings: ${pct(st.raw[bestFinal])}). ` +
            `${thousands(st.nKept, ",")} of ${thousands(st.vocab, ",")} tokens can still be drawn; entropy ${entropy(fin).toFixed(2)} nats.`;
    if (st.topK > st.vocab) s += ` (Top-k ${thousands(st.topK, ",")} is above the vocabulary of ${thousands(st.vocab, ",")}: it removes nothing.)`;
    if (st.temperature === 0 && st.asked > 0) s += ` (Temperature ${g3(st.asked)} is below 0.0001: treated as 0, greedy.)`;
    if (row.wrote !== null && row.wrote !== undefined) s += ` Step ${row.pos} of ${row.n_steps}: the greedy translation wrote ${quote(row.wrote)} here.`;
    return s;
  };
  /* A token id's display label (unescaped: markdown escapes it again), from the vocabulary shipped once per model. */
  const label = (id) => {
    const top = S.row && S.row.top.find((t) => t[0] === id);
    if (top) return unesc(top[1]);
    return S.vocab && S.vocab.labels[id] !== undefined ? unesc(S.vocab.labels[id]) : `<${id}>`;
  };

  // ------------------------------------------------------------------ samples, drawn in the page
  /* A small seeded generator (mulberry32): same seed, same draws. */
  const rng = (seed) => {
    let a = seed >>> 0;
    return () => {
      a = (a + 0x6d2b79f5) >>> 0;
      let t = a;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  };

  AP.sample = (n, seed, temperature, topK, topP) => {
    const row = S.row;
    if (!row || row.message !== undefined) return [null, row ? row.message : "Press Run to see what the model predicts."];
    const st = AP.staged(row.logits, +temperature, Math.round(+topK), +topP, row.order);
    S.draws += 1; // each click draws afresh, the same for the same seed and click
    const next = rng(((Math.max(0, Math.floor(+seed || 0)) * 100003) + S.draws) >>> 0);
    const ids = [], cdf = [];
    let acc = 0;
    for (const id of st.order) {
      if (!st.kept[id]) continue;
      acc += st.final[id];
      ids.push(id);
      cdf.push(acc);
    }
    const counts = new Map();
    for (let d = 0; d < n; d++) {
      const u = next() * acc;
      let lo = 0, hi = cdf.length - 1;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (cdf[mid] > u) hi = mid; else lo = mid + 1;
      }
      counts.set(ids[lo], (counts.get(ids[lo]) || 0) + 1);
    }
    const drawn = [...counts.entries()].sort((a, b) => b[1] - a[1] || a[0] - b[0]).slice(0, 20);
    const c = S.payload.colours, layout = clone(row.base.layout);
    const x = drawn.map((_, r) => r);
    const names = drawn.map(([id]) => esc(label(id)));
    const fig = {
      data: [
        {type: "bar", name: `share of ${n} draws`, x, y: drawn.map(([, k]) => k / n), marker: {color: c.final},
         customdata: drawn.map(([id, k], r) => [names[r], id, k]),
         hovertemplate: "<b>‘%{customdata[0]}’</b> · id %{customdata[1]}<br>drawn %{customdata[2]} times (%{y:.1%})<extra></extra>"},
        {type: "scatter", mode: "markers", name: "final probability", x, y: drawn.map(([id]) => st.final[id]),
         marker: {symbol: "diamond", size: 10, color: c.threshold}, hovertemplate: "expected %{y:.1%}<extra></extra>"},
      ],
      layout: {
        template: layout.template, font: layout.font, hoverlabel: layout.hoverlabel, height: 340,
        title: {text: `${n} draw${n > 1 ? "s" : ""} at position ${row.pos}<br><sup>${n} draw${n !== 1 ? "s" : ""}, ${counts.size} distinct token${counts.size !== 1 ? "s" : ""}</sup>`, x: 0.02, xanchor: "left"},
        margin: {l: 70, r: 30, t: 90, b: 90},
        xaxis: {tickmode: "array", tickvals: x, ticktext: names.map((s) => esc(shortLabel(unesc(s), 14))), tickangle: -45, title: {text: "token"}},
        yaxis: {title: {text: "share"}, tickformat: ".0%", rangemode: "tozero"},
        legend: {orientation: "h", y: 1.02, x: 1, xanchor: "right", yanchor: "bottom"},
      },
    };
    let text;
    if (n === 1) {
      const id = drawn[0][0];
      text = `Drew ${quote(label(id))} (it had ${pct(st.final[id])} probability).`;
    } else {
      const [id, k] = drawn[0];
      text = `The most drawn token was ${quote(label(id))}: ${pct(k / n)} of ${n} draws against ${pct(st.final[id])} promised. More draws, closer bars.`;
    }
    return [fig, text];
  };

  // ------------------------------------------------------------------ the events' js functions
  /* After a Run: remember what it shipped, then draw every view. Returns the values of
     [attention, distribution, grid, mask, Δ, samples, distribution note, mask help, sample note]. */
  AP.run = (payload, vocab, layer, head, temperature, topK, topP) => {
    AP.setVocab(vocab);
    if (!payload || payload.empty) {
      S.payload = null;
      S.row = null;
      S.attn = null;
      return [null, null, null, null, null, null, "", "", ""];
    }
    S.payload = payload;
    S.draws = 0;
    setRow(payload.dist);
    setAttention(payload.attn);
    const [dist, note] = AP.distribution(temperature, topK, topP);
    const [mask, maskHelp] = AP.mask(layer);
    drawn.sampling = drawn.view = drawn.mask = drawn.delta = ""; // the values below are this Run's first pictures
    AP.saveState();
    AP.refollow();
    return [plotValue(AP.heatmap(layer, head)), plotValue(dist), plotValue(AP.grid(layer, head)), plotValue(mask),
            plotValue(AP.delta(layer)), null, note, maskHelp, ""];
  };

  /* The tabs that draw the Explore tab's Run do so when they are opened (app/follow.py: a Run sends
     them nothing). A Run that lands while one of them is open (Run pressed, that tab opened before
     the answer) is drawn there by pressing the tab's hidden redraw button, which asks the server for
     this Run once, as opening the tab does (clicking the open tab sends nothing). */
  const FOLLOWING = ["lens", "steps", "ablate", "anatomy", "embeddings"]; // app.follow.TABS
  AP.following = FOLLOWING;
  AP.refollow = () => {
    const open = document.querySelector('button[role="tab"][aria-selected="true"]');
    const id = open && open.getAttribute("data-tab-id");
    const again = id && FOLLOWING.includes(id) ? document.getElementById(`${id}-redraw`) : null;
    if (again) setTimeout(() => again.click(), 0);
  };

  /* Slider moves are drawn at most once an animation frame, the latest settings only: a drag sends
     far more input events than a plot can be redrawn, and drawing each would queue up behind the
     thumb. A move that comes after a frame without drawing is drawn at once (no wait for the next
     frame); the ones that follow within the frame wait for it. Moves come from the range inputs
     themselves (listened to below, the quickest path) and from Gradio's js events (the number boxes,
     the grid's clicks); a setting already drawn is not drawn again. The address is written once the
     moves pause. */
  const FRAME = 16;
  const pending = {sampling: null, view: null};
  const drawn = {sampling: "", view: "", mask: "", delta: ""};
  let scheduled = false, lastFlush = -Infinity, saving = null;
  const schedule = () => {
    if (scheduled) return;
    if (performance.now() - lastFlush >= FRAME) {
      flush();
    } else {
      scheduled = true;
      requestAnimationFrame(flush);
    }
  };
  const flush = () => {
    scheduled = false;
    lastFlush = performance.now();
    const s = pending.sampling, v = pending.view;
    pending.sampling = pending.view = null;
    if (s) drawSampling(...s);
    if (v) drawView(...v);
    if (s || v) {
      clearTimeout(saving);
      saving = setTimeout(AP.saveState, SETTLE / 2); // before the full redraw a test (or a person) waits for
    }
  };
  const runId = () => (S.payload ? S.payload.run : 0);

  const drawSampling = (temperature, topK, topP) => {
    const key = `${runId()}|${S.row && S.row.pos}|${+temperature}|${Math.round(+topK)}|${+topP}`;
    if (key === drawn.sampling) return;
    const [fig] = AP.distribution(temperature, topK, topP);
    if (!fig) return;
    if (draftDistribution(fig)) {
      later("distribution-plot", fig);
    } else {
      clearTimeout(settle["distribution-plot"]);
      react("distribution-plot", fig);
    }
    drawn.sampling = key;
  };

  /* Heatmap of the layer and head; the grid's frame moved (a relayout of one shape, not a redraw of
     every thumbnail); the mask and Δ only when the layer's own changes. */
  const drawView = (layer, head) => {
    const a = S.attn, kind = a ? a.kind : "";
    const key = `${runId()}|${kind}|${layer}|${head}`;
    if (key === drawn.view) return;
    if (a) {
      const fig = AP.heatmap(layer, head);
      if (draftHeatmap("attention-plot", fig)) {
        later("attention-plot", fig);
      } else {
        clearTimeout(settle["attention-plot"]);
        react("attention-plot", fig);
      }
      moveFrame(layer, head);
      const rule = a.masks[Math.min(layer, a.masks.length - 1)], maskKey = `${runId()}|${kind}|${rule.pattern}|${rule.window}`;
      if (maskKey !== drawn.mask) {
        const [mask] = AP.mask(layer);
        if (react("mask-plot", mask)) drawn.mask = maskKey;
      }
    }
    const deltaKey = `${runId()}|${layer}`;
    if (S.payload && S.payload.delta && deltaKey !== drawn.delta && react("delta-plot", AP.delta(layer))) drawn.delta = deltaKey;
    drawn.view = key;
  };
  const moveFrame = (layer, head) => {
    const gd = plotDiv("grid-plot"), fig = AP.grid(layer, head);
    if (!gd || !fig || !window.Plotly || !gd.layout || !gd.layout.shapes || !gd.layout.shapes.length) {
      if (fig) react("grid-plot", fig);
      return;
    }
    const f = fig.layout.shapes[0];
    window.Plotly.relayout(gd, {"shapes[0].x0": f.x0, "shapes[0].x1": f.x1, "shapes[0].y0": f.y0, "shapes[0].y1": f.y1});
  };

  /* Gradio's js event for the layer and head: the redraw is scheduled; returns [mask help, need] at
     once: ``need`` names a layer the Run did not ship (a big model's), which the server then sends. */
  AP.layerHead = (layer, head) => {
    layer = Math.round(+layer);
    head = Math.round(+head);
    const a = S.attn;
    if (!a && !(S.payload && S.payload.delta)) return [undefined, ""];
    if (a && !a.layers.includes(layer)) return [undefined, `${S.payload.run}:${layer}`];
    pending.view = [layer, head];
    schedule();
    return [a ? a.masks[Math.min(layer, a.masks.length - 1)].help : undefined, ""];
  };

  /* Gradio's js event for temperature, top-k and top-p: the redraw is scheduled; returns [the note]. */
  AP.sampling = (temperature, topK, topP) => {
    pending.sampling = [+temperature, Math.round(+topK), +topP];
    schedule();
    return [AP.note(temperature, topK, topP)];
  };

  /* The range inputs themselves, listened to directly: a drag's every step, before Gradio sees it. */
  const RANGES = {temperature: "sampling", "top-k": "sampling", "top-p": "sampling", layer: "view", head: "view"};
  const rangeValue = (id) => {
    const r = document.querySelector(`#${id} input[type=range]`);
    return r ? +r.value : 0;
  };
  document.addEventListener("input", (ev) => {
    const block = ev.target && ev.target.type === "range" && ev.target.closest("[id]");
    const what = block && RANGES[block.id];
    if (!what || !S.payload) return;
    if (what === "sampling") {
      pending.sampling = [rangeValue("temperature"), rangeValue("top-k"), rangeValue("top-p")];
    } else if (!S.attn || S.attn.layers.includes(rangeValue("layer"))) {
      pending.view = [rangeValue("layer"), rangeValue("head")];
    }
    schedule();
  }, true);

  /* The server sent other attention maps (another kind, or a layer the Run left out). */
  AP.attention = (attn, layer, head) => {
    if (!attn || !S.payload) return [undefined, undefined, undefined, undefined];
    S.payload.attn = attn;
    setAttention(attn);
    layer = Math.round(+layer);
    head = Math.round(+head);
    const [mask, help] = AP.mask(layer);
    drawn.view = drawn.mask = "";
    return [plotValue(AP.heatmap(layer, head)), plotValue(AP.grid(layer, head)), plotValue(mask), help];
  };

  /* The server sent the logits row of another position or translation step. */
  AP.row = (dist, temperature, topK, topP) => {
    if (!dist) return [undefined, undefined];
    drawn.sampling = "";
    setRow(dist);
    if (S.payload) S.payload.dist = dist;
    const [fig, note] = AP.distribution(temperature, topK, topP);
    return [plotValue(fig), note];
  };

  AP.samples = (n, seed, temperature, topK, topP) => {
    const [fig, note] = AP.sample(n, seed, temperature, topK, topP);
    return [plotValue(fig), note];
  };

  // ------------------------------------------------------------------ state in the address
  const SETTINGS = {temperature: "temperature", "top-k": "top_k", "top-p": "top_p", layer: "layer", head: "head",
                    "max-new-tokens": "max_new"};
  const sliderValue = (id) => {
    const el = document.querySelector(`#${id} input[type=number]`);
    return el ? el.value : null;
  };
  /* model, text and the sliders as the address's query: a reload or a shared link reopens them. */
  AP.saveState = () => {
    const params = new URLSearchParams(location.search);
    const text = document.querySelector("#text textarea");
    if (S.payload && S.payload.model) params.set("model", S.payload.model); // the model's key, as the Run had it
    if (text) params.set("text", text.value);
    for (const [id, key] of Object.entries(SETTINGS)) {
      const v = sliderValue(id);
      if (v !== null && v !== "") params.set(key, v);
    }
    history.replaceState(null, "", `${location.pathname}?${params.toString()}${location.hash}`);
  };
  /* The address's settings for the page's first Run, each checked and clamped where it is used
     (the server checks them again); anything missing keeps the page's default. */
  AP.restore = (model, text, layer, head, temperature, topK, topP, maxNew) => {
    const q = new URLSearchParams(location.search);
    const num = (key, fallback, lo, hi) => {
      const v = parseFloat(q.get(key));
      return Number.isFinite(v) ? Math.min(Math.max(v, lo), hi) : fallback;
    };
    const choices = (window.gradio_config && window.gradio_config.components || []).find((c) => c.props && c.props.elem_id === "model");
    const keys = choices && choices.props.choices ? choices.props.choices.map((c) => (Array.isArray(c) ? c[1] : c)) : [];
    const m = q.get("model");
    return [
      m && keys.includes(m) ? m : model,
      q.has("text") ? q.get("text").slice(0, 20000) : text,
      Math.round(num("layer", layer, 0, 1024)), Math.round(num("head", head, 0, 1024)),
      num("temperature", temperature, 0, 2), Math.round(num("top_k", topK, 0, 200)), num("top_p", topP, 0.01, 1),
      Math.round(num("max_new", maxNew, 1, 256)),
    ];
  };

  // ------------------------------------------------------------------ every plot: theme, export, grid clicks
  const download = (name, blob) => {
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = name;
    document.body.appendChild(a);
    a.click();
    setTimeout(() => (URL.revokeObjectURL(a.href), a.remove()), 1000);
  };
  const slug = (gd) => {
    const t = ((gd.layout && gd.layout.title && gd.layout.title.text) || "archplay").split("<br>")[0];
    return ("archplay-" + unesc(t.replace(/<[^>]*>/g, ""))).replace(/[^\w.-]+/g, "-").replace(/-+/g, "-").slice(0, 80);
  };
  let PLOTLY_SOURCE = null;
  /* A standalone interactive HTML file: the figure's data and plotly.js itself, nothing to fetch. */
  AP.exportHTML = async (gd) => {
    if (!PLOTLY_SOURCE) PLOTLY_SOURCE = await (await fetch("/archplay/plotly.min.js")).text();
    const fig = JSON.stringify({data: gd.data, layout: gd.layout}).replace(/</g, "\\u003c");
    const title = esc(slug(gd));
    const html = `<!doctype html><html><head><meta charset="utf-8"><title>${title}</title>` +
      `<script>${PLOTLY_SOURCE.replace(/<\/script/gi, "<\\/script")}<\/script></head><body>` +
      `<div id="plot" style="width:100%;height:95vh"></div><script>const f=${fig};` +
      `Plotly.newPlot("plot",f.data,f.layout,{responsive:true});<\/script></body></html>`;
    download(`${slug(gd)}.html`, new Blob([html], {type: "text/html"}));
  };
  AP.exportImage = async (gd, format) => {
    const url = await window.Plotly.toImage(gd, {format, width: gd._fullLayout.width, height: gd._fullLayout.height});
    const blob = await (await fetch(url)).blob();
    download(`${slug(gd)}.${format}`, blob);
  };
  const addExport = (gd) => {
    const host = gd.closest(".js-plotly-plot").parentElement;
    if (!host || host.querySelector(":scope > .ap-export")) return;
    const bar = document.createElement("div");
    bar.className = "ap-export";
    for (const [label, run] of [["HTML", () => AP.exportHTML(gd)], ["SVG", () => AP.exportImage(gd, "svg")],
                                ["PNG", () => AP.exportImage(gd, "png")]]) {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = label;
      b.title = `Download this plot as ${label === "HTML" ? "an interactive HTML file" : label}`;
      b.addEventListener("click", (ev) => (ev.stopPropagation(), run()));
      bar.appendChild(b);
    }
    host.style.position = host.style.position || "relative";
    host.appendChild(bar);
  };
  const setSlider = (id, value) => {
    const range = document.querySelector(`#${id} input[type=range]`);
    if (!range || range.value === String(value)) return;
    Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, "value").set.call(range, String(value));
    range.dispatchEvent(new Event("input", {bubbles: true}));
    range.dispatchEvent(new PointerEvent("pointerup", {bubbles: true}));
  };
  const onGridClick = (ev) => {
    const point = ev && ev.points && ev.points[0];
    const numbers = ((point && point.data && point.data.name) || "").match(/\d+/g) || [];
    if (numbers.length >= 1) setSlider("layer", numbers[0]);
    if (numbers.length >= 2) setSlider("head", numbers[1]);
  };
  const theme = (gd) => {
    if (!window.Plotly || !gd.layout) return;
    const dark = DARK(), isDark = gd.layout.paper_bgcolor === "#111827";
    if (dark === isDark) return;
    if (dark) {
      window.Plotly.relayout(gd, AP.themed(gd.layout));
    } else {
      const light = {paper_bgcolor: "white", plot_bgcolor: "white", "font.color": "#2a3f5f"};
      for (const key of Object.keys(gd.layout)) {
        if (/^[xy]axis\d*$/.test(key)) Object.assign(light, {[`${key}.gridcolor`]: "#EBF0F8", [`${key}.linecolor`]: "#EBF0F8", [`${key}.zerolinecolor`]: "#EBF0F8"});
      }
      window.Plotly.relayout(gd, light);
    }
  };
  let queued = false;
  const visit = () => {
    queued = false;
    for (const gd of document.querySelectorAll(".js-plotly-plot")) {
      addExport(gd);
      theme(gd);
      if (gd.closest("#grid-plot") && typeof gd.on === "function" && !gd._apClick) {
        gd._apClick = true;
        gd.on("plotly_click", onGridClick);
        gd.style.cursor = "pointer";
      }
    }
  };
  const observer = new MutationObserver(() => {
    if (!queued) {
      queued = true;
      requestAnimationFrame(visit);
    }
  });
  observer.observe(document.body, {childList: true, subtree: true});
  new MutationObserver(visit).observe(document.body, {attributes: true, attributeFilter: ["class"]});
  new MutationObserver(visit).observe(document.documentElement, {attributes: true, attributeFilter: ["class"]});
}
