// convscope's run view: the live page of `convscope view` (polls the server's JSON) and the page
// `convscope compare` writes (the same code, its data inlined as <script id="convscope-data">).
"use strict";

(function () {
  const SERIES = [  // per-layer curves: [key, title, as a percentage, log y axis]
    ["mean", "mean", false, false],
    ["std", "standard deviation", false, false],
    ["near_zero", "% of activations <= 0.05 (fastai's near zero: every negative value counts)", true, false],
    ["negative", "% of activations < 0 (what a ReLU after the layer zeroes)", true, false],
    ["abs_near_zero", "% of activations with |x| <= 0.05 (actually near zero)", true, false],
    ["dead", "% of channels dead (<= 0 for the whole batch)", true, false],
    ["grad_norm", "gradient norm of the layer's parameters (log scale: a zero is not drawn)", false, true],
    ["update_ratio", "update / weight ratio per step (log scale: a zero is not drawn)", false, true],
  ];
  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                  "#7f7f7f", "#bcbd22"];
  const params = new URLSearchParams(location.search);
  const POLL_MS = Math.max(250, Number(params.get("poll")) || 2000);
  const inline = document.getElementById("convscope-data");
  const STATIC = inline ? JSON.parse(inline.textContent) : null;

  const runs = new Map();      // id -> {id, name, group, study, color, data, steps, stats, hist: Map, version}
  const selected = new Set();
  let layer = params.get("layer") || "";
  let listed = [];

  // ------------------------------------------------------------------ data: live server or inlined
  async function getJSON(url) {
    const r = await fetch(url, {cache: "no-store"});
    if (!r.ok) throw new Error(`${url}: ${r.status} ${await r.text()}`);
    return r.json();
  }

  async function listRuns() {
    if (STATIC) return STATIC.runs.map(r => ({id: r.id, name: r.name, group: r.group, study: r.study}));
    return (await getJSON("api/runs")).runs;
  }

  async function fetchRun(run) {
    if (STATIC) return STATIC.data[run.id];
    const q = new URLSearchParams({id: run.id, steps: run.steps ? run.steps.step.length : 0,
                                   rows: run.stats ? run.stats.steps.length : 0, version: run.version || ""});
    if (run.stats && run.stats.steps.length) q.set("last", run.stats.steps[run.stats.steps.length - 1]);
    return getJSON("api/run?" + q);
  }

  async function fetchHist(run, name) {
    const have = run.hist.get(name);
    if (STATIC) return (STATIC.hist[run.id] || {})[name] || null;
    const q = new URLSearchParams({id: run.id, layer: name, rows: have ? have.steps.length : 0});
    if (have && have.steps.length) q.set("last", have.steps[have.steps.length - 1]);
    return getJSON("api/hist?" + q);
  }

  // ------------------------------------------------------------------ merging what came back
  function mergeRun(run, d) {
    if (d.unchanged) return false;
    run.version = d.version;
    run.data = {config: d.config, metrics: d.metrics, findings: d.findings, description: d.description};
    const s = d.steps;
    if (!run.steps || s.start === 0) {
      run.steps = {};
      for (const k of ["step", "epoch", "loss", "lr", "mom"]) run.steps[k] = s[k] ? s[k].slice() : [];
    } else {
      for (const k of ["step", "epoch", "loss", "lr", "mom"]) if (s[k]) run.steps[k].push(...s[k]);
    }
    if (d.stats) {
      const st = d.stats;
      if (!run.stats || !st.append) {
        run.stats = {layers: st.layers, kinds: st.kinds, bins: st.bins, every: st.every, steps: [], ran: []};
        for (const [k] of SERIES) run.stats[k] = [];
      }
      run.stats.every = st.every;
      run.stats.steps.push(...st.steps);
      for (const [k] of SERIES) run.stats[k].push(...st[k]);
    }
    return true;
  }

  function mergeHist(run, h) {
    if (!h) return;
    const have = run.hist.get(h.layer);
    if (!have || !h.append) run.hist.set(h.layer, {steps: h.steps.slice(), hist: h.hist.slice(), range: h.range,
                                                   bins: h.bins});
    else { have.steps.push(...h.steps); have.hist.push(...h.hist); }
  }

  // ------------------------------------------------------------------ drawing
  const BASE = {margin: {l: 55, r: 12, t: 30, b: 30}, font: {size: 11}, uirevision: "keep",
                legend: {orientation: "h", y: -0.3, font: {size: 10}}, hovermode: "closest"};

  // The run's arrays grow in place (push) as polls merge; the charts are drawn from copies (see drawLayer),
  // and each drawing gets a new datarevision, so Plotly.react redraws even a trace whose arrays it has seen.
  let revision = 0;

  function layout(title, extra) {
    return Object.assign({}, BASE, {title: {text: title, font: {size: 13}, x: 0.01}, datarevision: revision},
                         extra || {});
  }

  function noValues(why) {
    return {annotations: [{text: why, showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5,
                           font: {size: 12, color: "#666"}}]};
  }

  function draw(id, traces, lay) {
    const el = document.getElementById(id);
    if (!el) return;
    Plotly.react(el, traces, lay, {responsive: true, displaylogo: false});
  }

  function shown() { return listed.filter(r => selected.has(r.id)).map(r => runs.get(r.id)).filter(r => r && r.data); }

  function ema(values, beta) {
    let avg = 0, n = 0; const out = [];
    for (const v of values) {
      if (v === null) { out.push(null); continue; }
      avg = beta * avg + (1 - beta) * v; n += 1;
      out.push(avg / (1 - Math.pow(beta, n)));
    }
    return out;
  }

  function drawTraining(list) {
    const loss = [], acc = [], lr = [];
    for (const r of list) {
      const s = r.steps, x = s.step.slice();  // copies: see drawLayer
      loss.push({x: x, y: s.loss.slice(), name: r.name + " (raw)", legendgroup: r.id, showlegend: false,
                 line: {color: r.color, width: 1}, opacity: 0.3, type: "scatter", mode: "lines"});
      loss.push({x: x, y: ema(s.loss, 0.9), name: r.name, legendgroup: r.id, line: {color: r.color, width: 2},
                 type: "scatter", mode: "lines"});
      const m = r.data.metrics.filter(row => row.accuracy !== undefined && row.accuracy !== null);
      acc.push({x: m.map(row => row.epoch + 1), y: m.map(row => 100 * row.accuracy), name: r.name,
                mode: "lines+markers", line: {color: r.color}});
      lr.push({x: x, y: s.lr.slice(), name: r.name, line: {color: r.color}, type: "scatter", mode: "lines"});
    }
    draw("plot-loss", loss, layout("training loss per step (faint: raw; line: smoothed, EMA 0.9)",
                                   {yaxis: {type: "log"}, xaxis: {title: {text: "step", standoff: 2}}}));
    draw("plot-accuracy", acc, layout("test accuracy (%) after each epoch", {xaxis: {title: {text: "epoch"},
                                      dtick: 1}}));
    draw("plot-lr", lr, layout("learning rate", {xaxis: {title: {text: "step", standoff: 2}}}));
  }

  function layerNames(list) {
    const names = [];
    for (const r of list) if (r.stats) for (const n of r.stats.layers) if (!names.includes(n)) names.push(n);
    return names;
  }

  function drawLayer(list) {
    const holder = document.getElementById("layer-plots");
    if (!holder.children.length) {
      for (const [k] of SERIES) {
        const div = document.createElement("div");
        div.className = "plot"; div.id = "plot-" + k; holder.appendChild(div);
      }
    }
    const withStats = list.filter(r => r.stats && r.stats.layers.includes(layer));
    document.getElementById("layer-title").textContent = layer ? `Layer ${layer}` : "Layer";
    const missing = list.filter(r => !withStats.includes(r)).map(r => r.name);
    document.getElementById("layer-note").textContent =
      (layer ? `Per recorded step of ${layer}, every run that has it overlaid.` : "No run has statistics yet.") +
      (missing.length ? ` No statistics for this layer in: ${missing.join(", ")}.` : "");
    for (const [k, title, pct, log] of SERIES) {
      const traces = withStats.map(r => {
        const i = r.stats.layers.indexOf(layer);
        const y = r.stats[k].map(row => row[i] === null ? null : (pct ? 100 * row[i] : row[i]));
        // a copy of the steps: the live array grows on the next merge, before this chart is drawn again, and
        // Plotly (and anything that reads the chart) must see an x as long as its y
        return {x: r.stats.steps.slice(), y: y, name: r.name, line: {color: r.color}, type: "scatter", mode: "lines"};
      });
      let extra = {xaxis: {title: {text: "step", standoff: 2}}};
      if (log) extra.yaxis = {type: "log"};
      if (pct) extra.yaxis = {range: [-2, 102]};
      if (traces.length && traces.every(t => t.y.every(v => v === null))) {  // say why the chart is empty
        const kinds = withStats.map(r => r.stats.kinds[r.stats.layers.indexOf(layer)]).filter(Boolean);
        extra = Object.assign(extra, noValues(k === "grad_norm" || k === "update_ratio"
          ? `${layer}${kinds.length ? " (" + kinds[0] + ")" : ""} has no parameters: nothing to show`
          : "no values recorded for this layer"));
      }
      draw("plot-" + k, traces, layout(title, extra));
    }
  }

  function drawHeats(list) {
    const holder = document.getElementById("heats");
    const want = list.map(r => "heat-" + r.id.replace(/[^A-Za-z0-9_-]/g, "_"));
    for (const el of Array.from(holder.children)) if (!want.includes(el.id)) { Plotly.purge(el); el.remove(); }
    const notes = [];
    list.forEach((r, j) => {
      let div = document.getElementById(want[j]);
      if (!div) { div = document.createElement("div"); div.className = "heat"; div.id = want[j]; holder.appendChild(div); }
      const h = r.hist.get(layer);
      if (!h || !h.bins || !h.steps.length) {  // a short note, not an empty chart that looks broken
        notes.push(`${r.name}: no histograms of ${layer || "any layer"} recorded`);
        Plotly.purge(div); div.remove();
        return;
      }
      const [lo, hi] = h.range, width = (hi - lo) / h.bins;
      const y = Array.from({length: h.bins}, (_, b) => lo + (b + 0.5) * width);
      const z = y.map((_, b) => h.hist.map(row => row[b] === null ? null : Math.log1p(row[b])));
      const allDark = z.every(row => row.every(v => !v));
      Plotly.react(div, [{x: h.steps.slice(), y: y, z: z, type: "heatmap", colorscale: "Viridis", showscale: false,
                          hovertemplate: "step %{x}<br>value %{y:.3g}<br>log(1+count) %{z:.2f}<extra></extra>"}],
                   layout(`${r.name}: ${layer}, range [${lo}, ${hi}]` + (allDark ? " (all dark: no counts)" : ""),
                          {xaxis: {title: {text: "step", standoff: 2}}, yaxis: {title: {text: "activation"}}}),
                   {responsive: true, displaylogo: false});
    });
    document.getElementById("heat-note").textContent =
      "Histogram of the layer's activations per recorded step, colour log(1 + count): a bright bottom row over " +
      "a dark band is a collapse to zero; a widening, smooth band is healthy training." +
      (notes.length ? " " + notes.join("; ") + "." : "");
  }

  function text(tag, content, cls) {
    const el = document.createElement(tag); el.textContent = content; if (cls) el.className = cls; return el;
  }

  function drawSummary(list) {
    const body = document.querySelector("#summary tbody");
    body.replaceChildren();
    for (const r of list) {
      const tr = document.createElement("tr");
      tr.dataset.run = r.id;
      const name = document.createElement("td");
      const sw = text("span", "", "swatch"); sw.style.background = r.color;
      name.append(sw, r.name);
      const s = r.steps, m = r.data.metrics, last = m.length ? m[m.length - 1] : null;
      const lastLoss = s.loss.length ? s.loss[s.loss.length - 1] : null;
      const steps = text("td", String(s.step.length), "num"); steps.dataset.runSteps = String(s.step.length);
      tr.append(name, text("td", r.data.description), steps, text("td", String(m.length), "num"),
                text("td", lastLoss === null ? "" : lastLoss.toPrecision(4), "num"),
                text("td", last && last.accuracy != null ? (100 * last.accuracy).toFixed(2) + "%" : "", "num"),
                text("td", r.stats ? `${r.stats.steps.length} (every ${r.stats.every})` : "none", "num"),
                text("td", String(r.data.findings.length), "num"));
      body.appendChild(tr);
    }
  }

  function drawFindings(list) {
    const holder = document.getElementById("findings");
    holder.replaceChildren();
    for (const r of list) {
      const col = text("div", "", "col");
      const h = text("h3", r.name); const sw = text("span", "", "swatch"); sw.style.background = r.color;
      h.prepend(sw); col.appendChild(h);
      if (!r.data.findings.length) col.appendChild(text("p", "no findings (yet: they appear as the run is diagnosed)", "empty"));
      for (const f of r.data.findings) {
        const div = text("div", "", "finding sev-" + f.severity);
        const where = [f.layer, f.steps ? `steps ${f.steps[0]}-${f.steps[1]}` : ""].filter(Boolean).join(", ");
        div.append(text("b", `${f.severity}: ${f.rule}`), text("span", where ? ` (${where})` : ""),
                   text("div", f.evidence), text("div", "remedy: " + f.remedy));
        col.appendChild(div);
      }
      holder.appendChild(col);
    }
  }

  function flatten(obj, prefix, out) {
    for (const [k, v] of Object.entries(obj || {})) {
      const key = prefix ? prefix + "." + k : k;
      if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, key, out);
      else out[key] = JSON.stringify(v);
    }
    return out;
  }

  function drawConfig(list) {
    const holder = document.getElementById("config");
    holder.replaceChildren();
    if (list.length < 2) { holder.appendChild(text("p", "Select two runs or more to see how their settings differ.", "empty")); return; }
    const flat = list.map(r => flatten(r.data.config, "", {}));
    const keys = [...new Set(flat.flatMap(f => Object.keys(f)))].sort();
    const differ = keys.filter(k => new Set(flat.map(f => f[k])).size > 1);
    const same = keys.filter(k => !differ.includes(k));
    const table = document.createElement("table");
    const head = document.createElement("tr"); head.appendChild(text("th", "setting"));
    for (const r of list) head.appendChild(text("th", r.name));
    table.appendChild(head);
    for (const k of differ) {
      const tr = document.createElement("tr"); tr.appendChild(text("td", k));
      for (const f of flat) tr.appendChild(text("td", f[k] === undefined ? "(not set)" : f[k]));
      table.appendChild(tr);
    }
    holder.appendChild(differ.length ? table : text("p", "The runs' settings are the same.", "empty"));
    const details = document.createElement("details");
    details.appendChild(text("summary", `${same.length} settings the same in every run`));
    details.appendChild(text("p", same.map(k => `${k}=${flat[0][k]}`).join("  "), "note"));
    holder.appendChild(details);
  }

  function drawAll() {
    const list = shown();
    const names = layerNames(list);
    const picker = document.getElementById("layer");
    if (!names.includes(layer)) layer = names[0] || "";
    if (picker.options.length !== names.length || Array.from(picker.options).some((o, i) => o.value !== names[i])) {
      picker.replaceChildren(...names.map(n => { const o = text("option", n); o.value = n; return o; }));
    }
    picker.value = layer;
    revision += 1;
    drawSummary(list); drawTraining(list); drawLayer(list); drawHeats(list); drawFindings(list); drawConfig(list);
  }

  // ------------------------------------------------------------------ the run list
  function drawRunList() {
    const holder = document.getElementById("runs");
    holder.replaceChildren();
    let group = null;
    for (const r of listed) {
      if (r.group !== group) { group = r.group; holder.appendChild(text("div", group, "group")); }
      const label = document.createElement("label");
      const box = document.createElement("input"); box.type = "checkbox"; box.checked = selected.has(r.id);
      box.dataset.run = r.id;
      box.addEventListener("change", () => { box.checked ? selected.add(r.id) : selected.delete(r.id); refresh(true); });
      const sw = text("span", "", "swatch"); sw.style.background = runs.get(r.id).color;
      label.append(box, sw, r.name + (r.study ? ` (${r.study})` : ""));
      holder.appendChild(label);
    }
    if (!listed.length) holder.appendChild(text("p", "no runs found yet", "empty"));
  }

  async function updateList() {
    const found = await listRuns();
    const fresh = found.filter(r => !runs.has(r.id));
    for (const r of found) {
      if (!runs.has(r.id)) runs.set(r.id, {...r, version: "", color: COLORS[runs.size % COLORS.length], hist: new Map()});
    }
    const first = !listed.length;
    listed = found;
    const want = params.getAll("run");
    if (first) {
      for (const r of found) if (want.length ? want.includes(r.name) : selected.size < 8) selected.add(r.id);
    } else {
      for (const r of fresh) if (!want.length && selected.size < 8) selected.add(r.id);  // a run started since
    }
    drawRunList();
  }

  let busy = false;
  async function refresh(force) {
    if (busy) return; busy = true;
    try {
      let changed = !!force;
      for (const r of listed) {
        if (!selected.has(r.id)) continue;
        const run = runs.get(r.id);
        if (STATIC && run.data) continue;
        if (mergeRun(run, await fetchRun(run))) changed = true;
      }
      for (const run of shown()) {
        if (!layer) layer = layerNames(shown())[0] || "";
        if (layer && run.stats && run.stats.layers.includes(layer) &&
            (changed || !run.hist.has(layer)) && !(STATIC && run.hist.has(layer))) {
          mergeHist(run, await fetchHist(run, layer)); changed = true;
        }
      }
      if (changed) drawAll();
      const when = new Date().toLocaleTimeString();
      document.getElementById("status").textContent = STATIC
        ? `${listed.length} runs, written ${STATIC.written}`
        : `${listed.length} runs in ${listed.length ? [...new Set(listed.map(r => r.group))].join(", ") : "the given folders"}; checked ${when}, every ${POLL_MS / 1000} s`;
    } catch (e) {
      console.warn(e);
      document.getElementById("status").textContent = "cannot reach the server (stopped?): " + e.message;
    } finally { busy = false; }
  }

  window.convscopeView = {runs, selected, refresh};  // for tests and the browser console

  document.getElementById("layer").addEventListener("change", e => { layer = e.target.value; refresh(true); });
  if (STATIC) document.getElementById("title").textContent = "convscope compare";

  (async function main() {
    await updateList();
    await refresh(true);
    if (STATIC) return;
    let ticks = 0;
    setInterval(async () => {
      ticks += 1;
      if (ticks % 5 === 0) { try { await updateList(); } catch (e) { console.warn(e); } }
      await refresh(false);
    }, POLL_MS);
  })();
})();
