// The comparison view, #/compare/1,2,...: sweeps side by side, from GET /compare.
//   One drift plot: each sweep's optimal base LR at every width (±1σ) and its drift line
//   carried out to the widths it was transferred to, with the transferred LRs; a sweep at
//   one width (an LR sweep at a target) adds its own optimum there, the target's best.
//   Under µS the optima line up and the transferred LR meets the target's best; under SP
//   the line falls and the transfer misses.
//   One LR-curve panel per sweep: final eval loss against base LR, a line per width, each
//   width's fitted optimum marked; on a one-width sweep, the LRs transferred to its width.
// Sweeps of one parametrization and precision share a colour. Uses app.js's helpers.
"use strict";

// The sweeps list's hook: a checkbox per sweep and the button that compares the chosen ones.
function comparePicker() {
  const chosen = new Set();
  const button = h("button", { id: "compare-sweeps", disabled: true, onclick: () => {
    location.hash = `#/compare/${[...chosen].sort((a, b) => a - b).join(",")}`;
  } }, "Compare");
  function sync() {
    button.disabled = chosen.size < 2;
    button.textContent = chosen.size ? `Compare ${chosen.size} sweeps` : "Compare";
  }
  return {
    button,
    checkbox(id) {
      return h("input", { type: "checkbox", class: "compare-pick", title: "compare",
        dataset: { sweepId: id }, checked: chosen.has(id), onclick: (event) => {
          event.stopPropagation(); // the row's click opens the sweep
          if (event.target.checked) chosen.add(id);
          else chosen.delete(id);
          sync();
        } });
    },
  };
}

function sweepFamily(sweep) {
  return `${sweep.parametrization} ${sweep.precision}`;
}

function log2Lr(lr) {
  return `2^${Math.log2(lr).toFixed(2)}`;
}

// Asymmetric error bars of a log-scale LR from one standard error of its log2.
function lrErrorBars(optima) {
  return {
    type: "data", symmetric: false,
    array: optima.map((o) => o.value * (2 ** o.log2_uncertainty - 1)),
    arrayminus: optima.map((o) => o.value * (1 - 2 ** -o.log2_uncertainty)),
  };
}

function showCompare(ids) {
  const title = h("h1", { id: "compare-title", text: `Compare sweeps ${ids.join(", ")}` });
  const driftPlot = h("div", { class: "plot", id: "compare-drift", style: "height: 440px" });
  const checks = h("div", { id: "compare-checks" });
  const panels = h("div", { class: "grid2", id: "compare-panels" });
  setView(title,
    h("p", { class: "muted" }, "Each sweep's optimal base LR against width with its drift ",
      "line, out to the widths it was transferred to (◇ the transferred LR); ★ the optimum ",
      "of an LR sweep at one width, such as the check at a target. Under µS the optima line ",
      "up and the transferred LR lands on the target's own best; under SP they drift."),
    h("div", { class: "panel" }, driftPlot), checks,
    h("h2", { text: "LR curves" }), panels);
  const panelOf = new Map(); // sweep id: {plot, summary}

  async function refresh() {
    const body = await api("GET", `/compare?sweep_ids=${ids.join(",")}`);
    const families = [...new Set(body.sweeps.map(sweepFamily))];
    const colorOf = (sweep) => color(families.indexOf(sweepFamily(sweep)));
    title.textContent = `Compare: ${body.sweeps.map((s) => s.name).join(" · ")}`;
    drawCompareDrift(driftPlot, body.sweeps, colorOf);
    checks.replaceChildren(compareChecksTable(body.sweeps));
    for (const sweep of body.sweeps) {
      if (!panelOf.has(sweep.sweep_id)) {
        const panel = { plot: h("div", { class: "plot", id: `compare-lr-${sweep.sweep_id}` }),
          summary: h("div", { class: "muted" }) };
        panels.append(h("div", { class: "panel" },
          h("h3", {}, h("a", { href: `#/sweeps/${sweep.sweep_id}`, text: sweep.name })),
          panel.summary, panel.plot));
        panelOf.set(sweep.sweep_id, panel);
      }
      const { plot, summary } = panelOf.get(sweep.sweep_id);
      summary.textContent = `${sweepFamily(sweep)} · ${sweep.status} · widths ` +
        `${sweep.widths.join(", ")} · ` +
        (driftText(sweep) || (sweep.widths.length === 1 ? "one width: no drift" : "drift –"));
      drawCompareLr(plot, sweep, transfersTo(body.sweeps, sweep), colorOf(sweep));
    }
    return body.sweeps.some((s) => !FINISHED.has(s.status));
  }

  return poll(refresh);
}

// The LRs that the other sweeps of a one-width sweep's family transferred to its width.
function transfersTo(sweeps, sweep) {
  if (sweep.widths.length !== 1) return [];
  return sweeps.filter((s) => s !== sweep && sweepFamily(s) === sweepFamily(sweep)).flatMap((s) =>
    s.transfers.filter((t) => t.to_width === sweep.widths[0]).map((t) => ({ from: s, ...t })));
}

function drawCompareDrift(div, sweeps, colorOf) {
  const traces = [];
  const widths = new Set();
  for (const s of sweeps) {
    const c = colorOf(s);
    const optima = s.curves.map((w) => w.optimum);
    s.curves.forEach((w) => widths.add(w.width));
    if (s.widths.length === 1) {
      traces.push({ x: s.curves.map((w) => w.width), y: optima.map((o) => o.value),
        error_y: lrErrorBars(optima), mode: "markers", name: `${s.name}: the target's best`,
        marker: { symbol: "star", size: 15, color: c }, meta: { kind: "check-best", sweep: s.sweep_id },
        text: s.curves.map((w) => `best measured ${fmt.num(w.best_lr)} (loss ${fmt.loss(w.best_loss)})`) });
      continue;
    }
    traces.push({ x: s.curves.map((w) => w.width), y: optima.map((o) => o.value),
      error_y: lrErrorBars(optima), mode: "markers", name: `${s.name}: optimum ±1σ`,
      marker: { size: 9, color: c }, meta: { kind: "optima", sweep: s.sweep_id } });
    if (s.drift_line.length) {
      traces.push({ x: s.drift_line.map((p) => p.width), y: s.drift_line.map((p) => p.lr),
        mode: "lines", name: `${s.name}: ${driftText(s)}`,
        line: { dash: "dot", color: c }, meta: { kind: "drift-line", sweep: s.sweep_id } });
    }
    if (s.transfers.length) {
      s.transfers.forEach((t) => widths.add(t.to_width));
      traces.push({ x: s.transfers.map((t) => t.to_width), y: s.transfers.map((t) => t.base_lr),
        mode: "markers", name: `${s.name}: transferred`, meta: { kind: "transferred", sweep: s.sweep_id },
        marker: { symbol: "diamond-open", size: 13, color: c, line: { width: 2 } } });
    }
  }
  const ticks = [...widths].sort((a, b) => a - b);
  Plotly.react(div, traces, {
    title: { text: "Optimal base LR against width", font: { size: 14 } },
    xaxis: { type: "log", title: { text: "width (log scale)" }, tickvals: ticks,
      ticktext: ticks.map(String) },
    yaxis: { type: "log", title: { text: "optimal base LR" } },
    margin: { l: 60, r: 10, t: 40, b: 50 }, legend: { orientation: "h", y: -0.2 },
    uirevision: "compare",
  }, PLOT_CONFIG);
}

function drawCompareLr(div, sweep, transferred, c) {
  const traces = sweep.curves.map((w, i) => ({
    x: w.lr, y: w.loss, mode: "lines+markers", name: `width ${w.width}`,
    line: { color: c, width: 1 + (2 * i) / Math.max(1, sweep.curves.length - 1) },
    opacity: 0.45 + (0.55 * (i + 1)) / sweep.curves.length,
    meta: { kind: "lr-curve", sweep: sweep.sweep_id, width: w.width } }));
  traces.push({ x: sweep.curves.map((w) => w.optimum.value),
    y: sweep.curves.map((w) => w.optimum.loss), mode: "markers", name: "fitted optimum",
    marker: { symbol: "diamond", size: 10, color: "#1f2328" },
    meta: { kind: "optimum", sweep: sweep.sweep_id } });
  const losses = sweep.curves.flatMap((w) => w.loss);
  for (const t of transferred) {
    traces.push({ x: [t.base_lr, t.base_lr], y: [Math.min(...losses), Math.max(...losses)],
      mode: "lines", name: `transferred from ${t.from.name}`, line: { dash: "dash", color: "#cf222e" },
      meta: { kind: "transferred", sweep: sweep.sweep_id } });
  }
  Plotly.react(div, traces, {
    xaxis: { type: "log", title: { text: "base LR (log scale)" } },
    yaxis: { title: { text: "final eval loss" } },
    margin: { l: 60, r: 10, t: 20, b: 50 }, legend: { orientation: "h", y: -0.25 },
    uirevision: `lr-${sweep.sweep_id}`,
  }, PLOT_CONFIG);
}

// At each one-width sweep: the LR transferred there against the sweep's own best.
function compareChecksTable(sweeps) {
  const rows = sweeps.filter((s) => s.widths.length === 1 && s.curves.length).flatMap((s) =>
    transfersTo(sweeps, s).map((t) => {
      const best = s.curves[0].optimum;
      return h("tr", {},
        h("td", { class: "num", text: s.widths[0] }),
        h("td", { text: t.from.name }),
        h("td", { class: "num", text: log2Lr(t.base_lr) }),
        h("td", {}, h("a", { href: `#/sweeps/${s.sweep_id}`, text: s.name })),
        h("td", { class: "num", text: `${log2Lr(best.value)} ± ${best.log2_uncertainty.toFixed(2)}` }),
        h("td", { class: "num", text: (Math.log2(t.base_lr) - Math.log2(best.value)).toFixed(2) }),
        h("td", { class: "num", text: fmt.loss(s.curves[0].best_loss) }));
    }));
  if (!rows.length) return h("div");
  return h("div", { class: "panel" }, h("h3", { text: "Transferred LR against the target's own best" }),
    h("table", { id: "compare-checks-table" }, h("thead", {}, h("tr", {},
      ["target width", "transferred from", "transferred LR", "check sweep", "its best LR ±1σ",
        "log2 error", "its best loss"].map((c) => h("th", { text: c })))), h("tbody", {}, rows)));
}
