// The sweeper dashboard: plain JS over the REST API, Plotly for the plots, hash routes:
//   #/             sweeps, with their status and progress
//   #/new          the form that starts a sweep (its defaults: a tiny CPU sweep)
//   #/sweeps/ID    LR curves, training curves, trials, the transfer panel
//   #/runs         runs;  #/runs/ID  a run's live loss curve
//   #/compare/1,2  sweeps side by side (compare.js)
// Views poll the API every POLL_MS while what they show can still change.
"use strict";

const POLL_MS = 2000;
const TOKEN_KEY = "sweeper.apiToken";
const COLORS = ["#0969da", "#cf222e", "#1a7f37", "#8250df", "#bf8700", "#1b7c83",
  "#e16f24", "#57606a", "#bf3989", "#4b5563"];
const FINISHED = new Set(["completed", "failed", "cancelled"]);
const PLOT_CONFIG = { responsive: true, displaylogo: false };

// --- small helpers ---------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") el.textContent = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const fmt = {
  loss: (v) => (v === null || v === undefined ? "–" : v.toFixed(4)),
  num: (v, digits = 4) => (v === null || v === undefined ? "–" : Number(v).toPrecision(digits)),
  int: (v) => (v === null || v === undefined ? "–" : Number(v).toLocaleString()),
  time: (iso) => (iso ? new Date(iso).toLocaleString() : "–"),
  duration(start, end) {
    if (!start) return "–";
    const s = Math.max(0, ((end ? new Date(end) : new Date()) - new Date(start)) / 1000);
    return s < 120 ? `${s.toFixed(0)} s` : `${(s / 60).toFixed(1)} min`;
  },
};

function statusBadge(status) {
  return h("span", { class: `status ${status}`, text: status });
}

// A sweep's or a run's status; "stale" when it should have a driver and that driver is gone.
function jobBadge(job) {
  if (!job.stale) return statusBadge(job.status);
  return h("span", { class: `status ${job.status} stale`, text: `${job.status} · stale`,
    title: `its driver is gone (last heartbeat ${fmt.time(job.driver_heartbeat_at)}); ` +
      "the service's watchdog resumes it" });
}

// What a sweep or run trains on (its data identity): dataset, tokenizer, token counts.
function dataInfo(data, id) {
  if (!data) return h("span", { class: "muted", id, text: "data not recorded" });
  const name = data.source.split("/").filter(Boolean).pop() || data.source;
  const counts = data.train_tokens === null ? "" :
    ` · ${fmt.int(data.train_tokens)} train + ${fmt.int(data.val_tokens)} val tokens`;
  return h("span", { class: "muted", id, title: `${data.source} (sha256 ${data.sha256})`,
    text: `data ${name} · ${data.tokenizer} tokenizer · vocab ${fmt.int(data.vocab_size)}` +
      counts });
}

// Resume is offered for a job that ended other than completed, or whose driver is gone.
function resumable(job) {
  return job.status !== "completed" && (FINISHED.has(job.status) || job.stale);
}

function progressCell(finished, planned) {
  return h("span", {}, h("progress", { max: planned || 1, value: finished }),
    ` ${finished}/${planned}`);
}

function color(i) {
  return COLORS[i % COLORS.length];
}

// --- the API ---------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.reason) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const token = localStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    data = null;
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

function showBanner(message, kind = "error") {
  const banner = document.getElementById("banner");
  banner.className = `banner ${kind}`;
  banner.textContent = message;
  banner.hidden = !message;
}

function explain(error) {
  if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
    return `${error.message}. Paste the token that \`sweeper serve\` printed into "API token" ` +
      "(top right), or open the address it printed.";
  }
  if (error instanceof ApiError) return `${error.status}: ${error.message}`;
  return `the service does not answer (${error.message}); retrying`;
}

// --- token -----------------------------------------------------------------------------

function initToken() {
  // `sweeper serve` prints http://host:port/#token=...: the fragment never reaches the server.
  const match = location.hash.match(/^#token=(.+)$/);
  if (match) {
    localStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", `${location.pathname}#/`);
  }
  const input = document.getElementById("token-input");
  const state = document.getElementById("token-state");
  const show = () => {
    state.textContent = localStorage.getItem(TOKEN_KEY) ? "set" : "not set";
  };
  document.getElementById("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (input.value.trim()) localStorage.setItem(TOKEN_KEY, input.value.trim());
    else localStorage.removeItem(TOKEN_KEY);
    input.value = "";
    show();
    showBanner("");
  });
  show();
}

// --- routing and polling ---------------------------------------------------------------

let generation = 0; // bumped on every route change: older polling loops stop

function setView(...children) {
  const view = document.getElementById("view");
  view.replaceChildren(...children);
  return view;
}

function poll(fn, ms = POLL_MS) {
  const gen = generation;
  const live = document.getElementById("live");
  const tick = async () => {
    if (gen !== generation) return;
    let again = true;
    try {
      again = await fn();
      live.textContent = again ? `live · updated ${new Date().toLocaleTimeString()}` : "";
    } catch (error) {
      if (gen === generation) showBanner(explain(error));
      if (error instanceof ApiError && error.status === 404) again = false;
    }
    if (again !== false && gen === generation) setTimeout(tick, ms);
  };
  return tick();
}

function route() {
  generation += 1;
  showBanner("");
  document.getElementById("live").textContent = "";
  const hash = location.hash || "#/";
  let match;
  let nav = "sweeps";
  if ((match = hash.match(/^#\/sweeps\/(\d+)$/))) showSweep(Number(match[1]));
  else if ((match = hash.match(/^#\/compare\/(\d+(?:,\d+)*)$/))) {
    showCompare(match[1].split(",").map(Number));
  }
  else if ((match = hash.match(/^#\/runs\/(\d+)$/))) {
    nav = "runs";
    showRun(Number(match[1]));
  } else if (hash === "#/runs") {
    nav = "runs";
    showRuns();
  } else if (hash === "#/new") {
    nav = "new";
    showNew();
  } else showSweeps();
  for (const a of document.querySelectorAll("header nav a[data-nav]")) {
    a.classList.toggle("active", a.dataset.nav === nav);
  }
}

// --- sweeps list -----------------------------------------------------------------------

function showSweeps() {
  const body = h("tbody", { id: "sweeps-body" });
  const empty = h("div", { id: "sweeps-empty", hidden: true });
  const picker = comparePicker();
  setView(
    h("div", { class: "row" }, h("h1", { text: "Sweeps" }),
      h("div", { class: "actions" }, picker.button,
        h("a", { class: "button", href: "#/new" }, "Start a sweep"))),
    h("table", { id: "sweeps-table" },
      h("thead", {}, h("tr", {}, ["", "id", "name", "status", "progress", "widths", "created",
        "duration"].map((c) => h("th", { text: c })))),
      body),
    empty,
  );
  return poll(async () => {
    const page = await api("GET", "/sweeps?limit=100");
    body.replaceChildren(...page.items.map((s) =>
      h("tr", { class: "clickable", dataset: { sweepId: s.id },
        onclick: () => { location.hash = `#/sweeps/${s.id}`; } },
      h("td", {}, picker.checkbox(s.id)),
      h("td", {}, h("a", { href: `#/sweeps/${s.id}`, text: s.id })),
      h("td", { text: s.name }),
      h("td", {}, jobBadge(s)),
      h("td", {}, progressCell(s.finished, s.planned)),
      h("td", { text: s.widths.join(", ") }),
      h("td", { text: fmt.time(s.created_at) }),
      h("td", { text: fmt.duration(s.started_at, s.finished_at) }))));
    if (page.total === 0 && empty.hidden) {
      empty.hidden = false;
      empty.append(h("p", { class: "muted" },
        "No sweeps yet. The form below starts a tiny µS sweep in emulated FP8 that runs on a ",
        "CPU in a minute or two."), specForm());
    }
    return true;
  }, 3000);
}

// --- the start-a-sweep form ------------------------------------------------------------

// [dotted spec path, label, type or choices]; the defaults are the example spec the API serves
// (GET /sweeps/example: examples/debug_sweep.yaml), "precision" its list of precisions.
const SPEC_FIELDS = [
  ["Sweep", [
    ["name", "name", "str"],
    ["widths", "proxy widths (comma-separated)", "ints"],
    ["algorithm", "search algorithm", ["grid", "tpe"]],
    ["trials_per_width", "trials per width (tpe)", "int"],
    ["max_concurrency", "trials at once (empty: no cap)", "int?"],
  ]],
  ["Search space", [
    ["search.lr.min", "base LR, lowest", "float"],
    ["search.lr.max", "base LR, highest", "float"],
    ["search.lr.points", "LR grid points (log-spaced)", "int"],
    ["search.wd", "weight decay values (comma-separated)", "floats"],
  ]],
  ["Model (the width is swept)", [
    ["train.model.depth", "depth (blocks)", "int"],
    ["train.model.head_dim", "head dim", "int"],
    ["train.model.seq_len", "sequence length", "int"],
    ["train.model.parametrization", "parametrization", ["mus", "sp"]],
  ]],
  ["Training", [
    ["train.data", "data: a text file on the server, or stdlib", "str"],
    ["train.steps", "steps", "int"],
    ["train.batch_size", "batch size", "int"],
    ["train.precision", "precision", "precision"],
    ["train.eval_interval", "evaluate every (steps)", "int"],
    ["train.eval_batches", "eval batches", "int"],
    ["train.device", "device", ["cpu", "auto", "cuda"]],
  ]],
  ["Resources per trial", [
    ["resources.cpu", "CPUs", "float"],
    ["resources.gpu", "GPUs (a fraction shares one)", "float"],
    ["asha", "stop unpromising trials early (ASHA)", "bool"],
  ]],
];

function parseField(type, raw) {
  // Unparseable input is sent as typed: the API's 422 then names the field and says why.
  const number = (text) => (text.trim() !== "" && !Number.isNaN(Number(text)) ? Number(text) : text);
  const list = (text) => text.split(/[,\s]+/).filter((x) => x !== "").map(number);
  switch (type) {
    case "int": case "float": return number(raw);
    case "int?": return raw.trim() === "" ? undefined : number(raw);
    case "ints": case "floats": return list(raw);
    default: return raw;
  }
}

let formDefaults = null; // the API's example spec and choices, read once
function defaults() {
  formDefaults = formDefaults || api("GET", "/sweeps/example");
  return formDefaults;
}

function getPath(source, path) {
  return path.split(".").reduce((node, part) => (node == null ? undefined : node[part]), source);
}

function shown(value) {
  if (Array.isArray(value)) return value.join(", ");
  return value == null ? "" : String(value);
}

function setPath(target, path, value) {
  const parts = path.split(".");
  let node = target;
  for (const part of parts.slice(0, -1)) node = node[part] = node[part] || {};
  node[parts.at(-1)] = value;
}

function specFromForm(form) {
  const spec = {};
  for (const [, fields] of SPEC_FIELDS) {
    for (const [path, , type] of fields) {
      const input = form.elements.namedItem(path);
      const value = type === "bool" ? input.checked
        : Array.isArray(type) ? input.value : parseField(type, input.value);
      if (value !== undefined) setPath(spec, path, value);
    }
  }
  return spec;
}

function markInvalid(form, error) {
  for (const el of form.querySelectorAll(".invalid")) el.classList.remove("invalid");
  for (const e of (error.body && error.body.errors) || []) {
    if (!e.field) continue;
    for (const el of form.querySelectorAll("[name]")) {
      if (el.name === e.field || el.name.startsWith(`${e.field}.`)) el.classList.add("invalid");
    }
  }
}

async function startSweep(spec, form, errorBox) {
  errorBox.textContent = "";
  try {
    const created = await api("POST", "/sweeps", spec);
    location.hash = `#/sweeps/${created.id}`;
  } catch (error) {
    errorBox.textContent = error instanceof ApiError && error.status === 422
      ? `Not started: ${error.message}` : explain(error);
    if (form && error instanceof ApiError) markInvalid(form, error);
  }
}

function specForm() {
  const box = h("div", {});
  defaults().then((example) => box.append(filledSpecForm(example)),
    (error) => box.append(h("div", { class: "form-error", role: "alert", text: explain(error) })));
  return box;
}

function filledSpecForm(example) {
  const errorBox = h("div", { class: "form-error", id: "spec-error", role: "alert" });
  const form = h("form", { class: "spec", id: "spec-form", novalidate: true },
    SPEC_FIELDS.map(([legend, fields]) => h("fieldset", {}, h("legend", { text: legend }),
      h("div", { class: "fields" }, fields.map(([path, label, kind]) => {
        const type = kind === "precision" ? example.precisions : kind;
        const value = getPath(example.spec, path);
        let input;
        if (Array.isArray(type)) {
          input = h("select", { name: path }, type.map((c) => h("option",
            { value: c, selected: c === value }, c)));
        } else if (type === "bool") {
          input = h("input", { name: path, type: "checkbox", checked: Boolean(value) });
        } else {
          input = h("input", { name: path, value: shown(value) });
        }
        return h("label", {}, label, input);
      })))),
    h("div", { class: "row" },
      h("button", { class: "primary", type: "submit", id: "start-sweep" }, "Start the sweep"),
      h("span", { class: "muted" }, "Needs the API token. The sweep runs on the Ray cluster, ",
        "not in this service.")),
    errorBox);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    startSweep(specFromForm(form), form, errorBox);
  });

  const json = h("textarea", { class: "json", id: "spec-json", spellcheck: "false" });
  const jsonError = h("div", { class: "form-error", role: "alert" });
  const details = h("details", {},
    h("summary", {}, "…or edit the spec as JSON (every SweepSpec field: tau, TPE, ASHA, …)"),
    json,
    h("div", { class: "row" }, h("button", { type: "button", onclick: () => {
      let spec;
      try {
        spec = JSON.parse(json.value);
      } catch (e) {
        jsonError.textContent = `not valid JSON: ${e.message}`;
        return;
      }
      startSweep(spec, null, jsonError);
    } }, "Start from JSON")),
    jsonError);
  details.addEventListener("toggle", () => {
    if (details.open && !json.value) json.value = JSON.stringify(specFromForm(form), null, 2);
  });
  return h("div", {}, form, details);
}

function showNew() {
  setView(h("h1", { text: "Start a sweep" }),
    h("p", { class: "muted" }, "Sweep the base LR (and WD) at each proxy width. The defaults ",
      "are a tiny µS sweep in emulated FP8 that runs on a CPU in a minute or two."),
    specForm());
}

// --- one sweep -------------------------------------------------------------------------

function lrCurveTraces(curves) {
  const traces = [];
  const widthIndex = new Map(curves.widths.map((w, i) => [w.width, i]));
  curves.widths.forEach((w, i) => {
    traces.push({
      x: w.line.map((p) => p.lr),
      y: w.line.map((p) => p.final_eval_loss),
      mode: "lines+markers",
      name: `width ${w.width}`,
      line: { color: color(i) },
      meta: { kind: "lr-curve", width: w.width },
      hovertemplate: `width ${w.width}<br>lr %{x:.4g}<br>loss %{y:.4f}<extra></extra>`,
    });
  });
  const best = curves.widths.filter((w) => w.best && w.best.final_eval_loss !== null);
  if (best.length) {
    traces.push({
      x: best.map((w) => w.best.lr),
      y: best.map((w) => w.best.final_eval_loss),
      mode: "markers",
      name: "best trial",
      marker: { symbol: "star", size: 15, color: best.map((w) => color(widthIndex.get(w.width))),
        line: { width: 1, color: "#1f2328" } },
      meta: { kind: "best" },
      hovertemplate: "best<br>lr %{x:.4g}<br>loss %{y:.4f}<extra></extra>",
    });
  }
  const finite = curves.widths.flatMap((w) => w.line.map((p) => p.final_eval_loss));
  const diverged = curves.widths.flatMap((w) => w.points.filter((p) => p.status === "diverged"));
  if (diverged.length && finite.length) {
    traces.push({
      x: diverged.map((p) => p.lr),
      y: diverged.map(() => Math.max(...finite)),
      mode: "markers",
      name: "diverged",
      marker: { symbol: "x-thin-open", size: 12, color: "#cf222e" },
      meta: { kind: "diverged" },
      hovertemplate: "diverged at lr %{x:.4g}<extra></extra>",
    });
  }
  const fit = curves.transfer;
  if (fit && fit.widths && fit.widths.length) {
    traces.push({
      x: fit.widths.map((w) => w.lr.value),
      y: fit.widths.map((w) => w.lr.loss),
      error_x: {
        type: "data",
        symmetric: false,
        array: fit.widths.map((w) => w.lr.value * (2 ** w.lr.log2_uncertainty - 1)),
        arrayminus: fit.widths.map((w) => w.lr.value * (1 - 2 ** -w.lr.log2_uncertainty)),
        thickness: 1.5,
        color: "#57606a",
      },
      mode: "markers",
      name: "fitted optimum ±1σ",
      marker: { symbol: "diamond-open", size: 11,
        color: fit.widths.map((w) => color(widthIndex.get(w.width) ?? 0)) },
      meta: { kind: "fit" },
      hovertemplate: "fitted optimum<br>lr %{x:.4g}<br>loss %{y:.4f}<extra></extra>",
    });
  }
  return traces;
}

function driftText(transfer, axis = "width") {
  if (!transfer || !transfer.drift) return "";
  const d = transfer.drift;
  const slope = Math.abs(d.slope) < 0.005 ? "0.00" : `${d.slope > 0 ? "+" : ""}${d.slope.toFixed(2)}`;
  return `drift ${slope} ± ${d.uncertainty.toFixed(2)} ` +
    `log2(LR*) per doubling of ${axis}`;
}

function horizonText(hz) {
  const sign = (x) => (x > 0 ? "+" : "") + x.toFixed(2);
  return `${sign(hz.slope)} ± ${hz.uncertainty.toFixed(2)} log2(LR*) per doubling of tokens; ` +
    `${hz.from_tokens.toLocaleString("en")} → ${hz.to_tokens.toLocaleString("en")} tokens ` +
    `moves the base LR by 2^(${sign(hz.log2_shift)} ± ${hz.log2_shift_uncertainty.toFixed(2)})`;
}

function drawLrCurves(div, curves) {
  const drift = driftText(curves.transfer);
  Plotly.react(div, lrCurveTraces(curves), {
    title: { text: drift ? `LR curves · ${drift}` : "LR curves", font: { size: 14 } },
    xaxis: { type: "log", title: { text: "base learning rate (log scale)" } },
    yaxis: { title: { text: "final eval loss" } },
    margin: { l: 60, r: 10, t: 40, b: 50 },
    legend: { orientation: "h", y: -0.2 },
    uirevision: "lr",
  }, PLOT_CONFIG);
}

function drawTrainingCurves(div, curves, which) {
  const widthIndex = new Map(curves.widths.map((w, i) => [w.width, i]));
  const seen = new Set();
  const traces = curves.trials.map((t) => {
    const first = !seen.has(t.width);
    seen.add(t.width);
    const lr = t.params.lr === undefined ? "" : ` lr ${Number(t.params.lr).toPrecision(3)}`;
    return {
      x: t.step,
      y: t[which],
      mode: "lines+markers",
      name: `width ${t.width}`,
      legendgroup: `w${t.width}`,
      showlegend: first,
      line: { color: color(widthIndex.get(t.width) ?? 0), width: 1.5,
        dash: t.status === "diverged" ? "dot" : "solid" },
      marker: { size: 4 },
      meta: { kind: "trial", trial_id: t.trial_id },
      connectgaps: true,
      hovertemplate: `${t.key}${lr}<br>step %{x}<br>loss %{y:.4f}<extra></extra>`,
    };
  });
  Plotly.react(div, traces, {
    title: { text: "Training curves, every trial", font: { size: 14 } },
    xaxis: { title: { text: "step" } },
    yaxis: { title: { text: which === "eval_loss" ? "eval loss" : "train loss" } },
    margin: { l: 60, r: 10, t: 40, b: 50 },
    legend: { orientation: "h", y: -0.2 },
    uirevision: "train",
  }, PLOT_CONFIG);
}

function trialsTable(trials, best) {
  const bestIds = new Set(Object.values(best).map((t) => t.id));
  const hasTau = trials.some((t) => t.params.tau !== undefined);
  const columns = ["key", "width", "lr", "wd", ...(hasTau ? ["tau"] : []), "status",
    "final eval loss", "steps", "tokens/s", "startup s", "node"];
  return h("table", { id: "trials-table" },
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { text: c })))),
    h("tbody", {}, trials.map((t) => h("tr", { class: bestIds.has(t.id) ? "best" : "" },
      h("td", { class: "mono", text: t.key }),
      h("td", { class: "num", text: t.width }),
      h("td", { class: "num", text: fmt.num(t.params.lr) }),
      h("td", { class: "num", text: fmt.num(t.params.wd, 3) }),
      hasTau ? h("td", { class: "num", text: fmt.num(t.params.tau, 3) }) : null,
      h("td", {}, statusBadge(t.status)),
      h("td", { class: "num", text: fmt.loss(t.final_eval_loss) }),
      h("td", { class: "num", text: fmt.int(t.steps) }),
      h("td", { class: "num", text: fmt.int(t.tokens_per_s && Math.round(t.tokens_per_s)) }),
      h("td", { class: "num", text: fmt.num(t.startup_s, 2) }),
      h("td", { class: "mono", text: t.node_id ? t.node_id.slice(0, 8) : "–" })))));
}

function showSweep(id) {
  const title = h("h1", { id: "sweep-title", text: `Sweep ${id}` });
  const meta = h("div", { class: "row", id: "sweep-meta" });
  const errorLine = h("div", { class: "error-text", id: "sweep-error" });
  const cancel = h("button", { class: "danger", id: "cancel-sweep", onclick: () =>
    act(`/sweeps/${id}/cancel`, refresh) }, "Cancel");
  const resume = h("button", { id: "resume-sweep", onclick: () =>
    act(`/sweeps/${id}/resume`, refresh) }, "Resume");
  const lrPlot = h("div", { class: "plot", id: "lr-plot" });
  const trainPlot = h("div", { class: "plot", id: "train-plot" });
  const which = h("select", { id: "train-which" },
    h("option", { value: "eval_loss" }, "eval loss"),
    h("option", { value: "train_loss" }, "train loss"));
  const trials = h("div", { id: "trials" });
  // A new transfer redraws the LR curves with its fit and drift.
  const transfer = transferPanel(id, () => refresh().catch((e) => showBanner(explain(e))));
  let last = null;

  setView(
    h("div", { class: "row" }, title, h("div", { class: "actions" }, cancel, resume)),
    meta, errorLine,
    h("div", { class: "grid2" },
      h("div", { class: "panel" }, lrPlot,
        h("p", { class: "muted" }, "Final eval loss against the base LR at each proxy width; ",
          "★ is each width's best trial, ◇ the fitted optimum once a transfer is computed. ",
          "Under µS the curves' minima line up.")),
      h("div", { class: "panel" }, trainPlot, h("div", { class: "row" }, "show", which))),
    transfer.element,
    h("h2", { text: "Trials" }), trials);
  which.addEventListener("change", () => last && drawTrainingCurves(trainPlot, last, which.value));

  async function refresh() {
    const [detail, curves, trialPage] = await Promise.all([
      api("GET", `/sweeps/${id}`),
      api("GET", `/sweeps/${id}/curves`),
      api("GET", `/sweeps/${id}/trials?limit=500`),
    ]);
    last = curves;
    title.textContent = `Sweep ${detail.id}: ${detail.name}`;
    meta.replaceChildren(jobBadge(detail),
      h("span", { id: "sweep-progress" }, progressCell(detail.finished, detail.planned),
        " trials finished"),
      h("span", { class: "muted" }, `widths ${detail.widths.join(", ")} · `,
        `${detail.spec.train.model.parametrization} · ${detail.spec.train.precision} · `,
        `${detail.spec.algorithm} · started ${fmt.time(detail.started_at)} · `,
        `took ${fmt.duration(detail.started_at, detail.finished_at)}`),
      dataInfo(detail.data, "sweep-data"));
    errorLine.textContent = detail.error || "";
    cancel.disabled = FINISHED.has(detail.status);
    resume.disabled = !resumable(detail);
    drawLrCurves(lrPlot, curves);
    drawTrainingCurves(trainPlot, curves, which.value);
    trials.replaceChildren(trialsTable(trialPage.items, detail.best));
    transfer.update(detail, curves);
    // The curves may be a second older than the detail: poll until both show the end.
    return !(FINISHED.has(detail.status) && FINISHED.has(curves.status));
  }

  return poll(refresh);
}

// POST an action (cancel, resume) on the page's sweep or run, then poll it afresh: polling
// may have stopped at a final status, and a resumed job changes again.
async function act(path, refresh) {
  try {
    await api("POST", path);
    showBanner("");
  } catch (error) {
    showBanner(explain(error));
  }
  generation += 1;
  poll(refresh);
}

// --- the transfer panel ----------------------------------------------------------------

function transferPanel(sweepId, onTransfer) {
  const width = h("input", { id: "to-width", type: "number", min: 1, step: 1 });
  const tokens = h("input", { id: "to-tokens", type: "text", inputmode: "numeric", size: 8,
    placeholder: "e.g. 2e9" });
  const button = h("button", { class: "primary", id: "compute-transfer" }, "Compute transfer");
  const result = h("div", { id: "transfer-result" });
  const error = h("div", { class: "form-error", id: "transfer-error", role: "alert" });
  let spec = null;
  let shownFor = null;
  const element = h("div", { class: "panel", id: "transfer-panel" },
    h("h2", { text: "Transfer to a full-size width" }),
    h("form", { class: "row", onsubmit: async (event) => {
      event.preventDefault();
      error.textContent = "";
      button.disabled = true;
      try {
        const body = { to_width: Number(width.value) };
        if (tokens.value.trim()) body.to_tokens = Number(tokens.value);  // 2e9 reads as a count
        const out = await api("POST", `/sweeps/${sweepId}/transfer`, body);
        render(out.result);
        onTransfer();
      } catch (e) {
        error.textContent = explain(e);
      } finally {
        button.disabled = false;
      }
    } }, h("label", {}, "target width ", width),
    h("label", {}, "target tokens (optional) ", tokens), button,
    h("span", { class: "muted" }, "fits each width's optimum, measures the drift and gives ",
      "every parameter group's LR and WD at the target")),
    error, result);

  function render(t) {
    const drift = t.drift;
    const rows = t.widths.map((w) => h("tr", {},
      h("td", { class: "num", text: w.width }),
      h("td", { class: "num", text: fmt.num(w.lr.value) }),
      h("td", { class: "num", text: `×/÷ ${(2 ** w.lr.log2_uncertainty).toFixed(2)}` }),
      h("td", { class: "num", text: fmt.loss(w.lr.loss) }),
      h("td", { text: w.lr.method + (w.lr.at_edge ? ` (at ${w.lr.at_edge} edge)` : "") }),
      h("td", { class: "num", text: fmt.num(w.wd, 3) }),
      h("td", { class: "num", text: w.finite_points })));
    const groups = t.groups.map((g) => h("tr", {},
      h("td", { text: g.group }), h("td", { class: "num", text: g.fan_in }),
      h("td", { class: "num", text: fmt.num(g.lr) }),
      h("td", { class: "num", text: fmt.num(g.wd) })));
    const driftPlot = h("div", { class: "plot", id: "drift-plot", style: "height: 300px" });
    result.replaceChildren(
      h("div", { class: "grid2" },
        h("div", {},
          h("dl", { class: "kv" },
            h("dt", { text: "parametrization" }), h("dd", { text: t.parametrization }),
            h("dt", { text: "target width" }), h("dd", { id: "transfer-width", text: t.to_width }),
            h("dt", { text: "base LR" }), h("dd", { id: "transfer-lr", text: fmt.num(t.base_lr) }),
            h("dt", { text: "base WD" }), h("dd", { text: fmt.num(t.base_wd, 3) }),
            t.base_tau !== null ? [h("dt", { text: "τ" }), h("dd", { text: t.base_tau })] : null,
            h("dt", { text: "drift" }), h("dd", { id: "transfer-drift",
              text: drift ? driftText(t) : "– (needs two widths with a result)" }),
            h("dt", { text: "drift line at target" }),
            h("dd", { text: fmt.num(t.extrapolated_lr) }),
            t.to_depth ? [h("dt", { text: "target depth" }),
              h("dd", { id: "transfer-depth", text: t.to_depth })] : null,
            t.to_tokens ? [h("dt", { text: "target tokens" }),
              h("dd", { id: "transfer-tokens", text: t.to_tokens.toLocaleString("en") })] : null,
            (t.horizons || []).length ? [h("dt", { text: "drift per horizon" }),
              h("dd", { id: "transfer-horizon-drifts", text: t.horizons.map((o) =>
                `${o.tokens.toLocaleString("en")} tokens: ${driftText(o) || "–"}`).join("; ") })]
              : null,
            t.depth_drift ? [h("dt", { text: "depth drift" }),
              h("dd", { id: "transfer-depth-drift",
                text: `${driftText({ drift: t.depth_drift }, "depth")}` +
                  ` (depths ${t.depths.map((o) => o.depth).join(", ")})` })]
              : null,
            t.horizon ? [h("dt", { text: "horizon" }),
              h("dd", { id: "transfer-horizon", text: horizonText(t.horizon) })] : null),
          t.warnings.length ? h("ul", { class: "warnings", id: "transfer-warnings" },
            t.warnings.map((w) => h("li", { text: w }))) : null,
          h("h3", { text: "Per parameter group at the target width" }),
          h("table", { id: "transfer-groups" }, h("thead", {}, h("tr", {},
            ["group", "fan-in", "LR", "WD"].map((c) => h("th", { text: c })))),
          h("tbody", {}, groups)),
          h("h3", { text: "Optimum at each proxy width" }),
          h("table", {}, h("thead", {}, h("tr", {}, ["width", "LR*", "±1σ", "loss", "fit", "WD",
            "points"].map((c) => h("th", { text: c })))), h("tbody", {}, rows))),
        h("div", {}, driftPlot, launchForm(t))));
    drawDrift(driftPlot, t);
  }

  function launchForm(t) {
    const fields = {
      steps: h("input", { name: "steps", type: "number", min: 1,
        value: spec ? spec.train.steps * 10 : 1000 }),
      depth: h("input", { name: "depth", type: "number", min: 1,
        value: spec ? spec.train.model.depth : "" }),
      workers: h("input", { name: "workers", type: "number", min: 1, value: 1 }),
      gpus_per_worker: h("input", { name: "gpus_per_worker", type: "number", min: 0, step: "any",
        value: spec && spec.train.device.startsWith("cuda") ? 1 : 0 }),
      precision: h("select", { name: "precision" }),
    };
    defaults().then((example) => fields.precision.append(...example.precisions.map((p) =>
      h("option", { value: p, selected: spec && spec.train.precision === p }, p))));
    const launchError = h("div", { class: "form-error", role: "alert" });
    return h("form", { class: "spec", id: "launch-form", onsubmit: async (event) => {
      event.preventDefault();
      launchError.textContent = "";
      const body = { sweep_id: sweepId, to_width: t.to_width };
      for (const [key, input] of Object.entries(fields)) {
        if (input.value === "") continue;
        body[key] = key === "precision" ? input.value : Number(input.value);
      }
      try {
        const run = await api("POST", "/runs", body);
        location.hash = `#/runs/${run.id}`;
      } catch (e) {
        launchError.textContent = e instanceof ApiError && e.status === 404 && e.message === "Not Found"
          ? "this service has no runs API" : explain(e);
      }
    } },
    h("fieldset", {}, h("legend", { text: `Launch the full-size run at width ${t.to_width}` }),
      h("div", { class: "fields" }, Object.entries(fields).map(([key, input]) =>
        h("label", {}, key.replaceAll("_", " "), input))),
      h("div", { class: "row" },
        h("button", { class: "primary", type: "submit", id: "launch-run" }, "Launch run"))),
    launchError);
  }

  function drawDrift(div, t) {
    const x = t.widths.map((w) => w.width);
    const traces = [{
      x,
      y: t.widths.map((w) => w.lr.value),
      error_y: {
        type: "data", symmetric: false,
        array: t.widths.map((w) => w.lr.value * (2 ** w.lr.log2_uncertainty - 1)),
        arrayminus: t.widths.map((w) => w.lr.value * (1 - 2 ** -w.lr.log2_uncertainty)),
      },
      mode: "markers", name: "optimum ±1σ", marker: { size: 9, color: COLORS[0] },
    }, {
      x: [Math.min(...x), t.to_width], y: [t.base_lr, t.base_lr], mode: "lines",
      name: "transferred base LR", line: { dash: "dash", color: COLORS[2] },
    }];
    if (t.drift && t.extrapolated_lr) {
      const last = t.widths[t.widths.length - 1];
      traces.push({
        x: [x[0], t.to_width],
        y: [last.lr.value * (x[0] / last.width) ** t.drift.slope, t.extrapolated_lr],
        mode: "lines", name: "drift line", line: { dash: "dot", color: COLORS[1] },
      });
    }
    Plotly.react(div, traces, {
      title: { text: "Optimal base LR against width", font: { size: 14 } },
      xaxis: { type: "log", title: { text: "width (log scale)" },
        range: [Math.log10(Math.min(...x) / 1.4), Math.log10(t.to_width * 1.4)],
        tickvals: [...x, t.to_width], ticktext: [...x, t.to_width].map(String) },
      yaxis: { type: "log", title: { text: "optimal base LR" } },
      margin: { l: 60, r: 10, t: 40, b: 50 },
      legend: { orientation: "h", y: -0.25 },
    }, PLOT_CONFIG);
  }

  function update(detail, curves) {
    spec = detail.spec;
    if (!width.value) {
      const head = spec.train.model.head_dim;
      const target = Math.max(...detail.widths) * 8;
      width.value = Math.ceil(target / head) * head;
    }
    const key = curves.transfer ? JSON.stringify(curves.transfer).length : null;
    if (curves.transfer && key !== shownFor && !result.childElementCount) {
      shownFor = key;
      width.value = curves.transfer.to_width;
      render(curves.transfer);
    }
  }

  return { element, update };
}

// --- runs ------------------------------------------------------------------------------

function runConfig(run) {
  // A run's config: {launch: what was asked (to_width, steps, ...), train: its TrainConfig}.
  return (run.config && run.config.launch) || {};
}

function showRuns() {
  const body = h("tbody", {});
  const note = h("p", { class: "muted" });
  setView(h("h1", { text: "Runs" }),
    h("p", { class: "muted" }, "Full-size runs with a sweep's transferred values: open a sweep, ",
      "compute its transfer, then launch."),
    h("table", { id: "runs-table" }, h("thead", {}, h("tr", {}, ["id", "name", "status", "sweep",
      "width", "steps", "created", "duration"].map((c) => h("th", { text: c })))), body), note);
  return poll(async () => {
    let page;
    try {
      page = await api("GET", "/runs?limit=100");
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) {
        note.textContent = "This service has no runs API.";
        return false;
      }
      throw e;
    }
    note.textContent = page.total ? "" : "No runs yet.";
    body.replaceChildren(...page.items.map((r) => h("tr", { class: "clickable",
      onclick: () => { location.hash = `#/runs/${r.id}`; } },
    h("td", {}, h("a", { href: `#/runs/${r.id}`, text: r.id })),
    h("td", { text: r.name }),
    h("td", {}, jobBadge(r)),
    h("td", {}, r.sweep_id ? h("a", { href: `#/sweeps/${r.sweep_id}`, text: r.sweep_id }) : "–"),
    h("td", { class: "num", text: runConfig(r).to_width ?? "–" }),
    h("td", { class: "num", text: fmt.int(runConfig(r).steps) }),
    h("td", { text: fmt.time(r.created_at) }),
    h("td", { text: fmt.duration(r.started_at, r.finished_at) }))));
    return true;
  }, 3000);
}

function showRun(id) {
  const title = h("h1", { id: "run-title", text: `Run ${id}` });
  const meta = h("div", { class: "row", id: "run-meta" });
  const errorLine = h("div", { class: "error-text" });
  const cancel = h("button", { class: "danger", id: "cancel-run", onclick: () =>
    act(`/runs/${id}/cancel`, refresh) }, "Cancel");
  const resume = h("button", { id: "resume-run", onclick: () =>
    act(`/runs/${id}/resume`, refresh) }, "Resume");
  const plot = h("div", { class: "plot", id: "run-plot" });
  const config = h("pre", { class: "mono" });
  setView(h("div", { class: "row" }, title, h("div", { class: "actions" }, cancel, resume)),
    meta,
    errorLine, h("div", { class: "panel" }, plot),
    h("details", {}, h("summary", {}, "config"), config));

  async function refresh() {
    const [run, metrics] = await Promise.all([
      api("GET", `/runs/${id}`), api("GET", `/runs/${id}/metrics`)]);
    title.textContent = `Run ${run.id}: ${run.name}`;
    const n = metrics.step.length;
    const last = n ? metrics.step[n - 1] : 0;
    meta.replaceChildren(jobBadge(run),
      h("span", {}, `step ${last} of ${runConfig(run).steps ?? "?"}`),
      n ? h("span", { id: "run-speed", text: `${fmt.int(Math.round(metrics.tokens_per_s[n - 1]))}`
        + ` tok/s, startup ${fmt.num(metrics.startup_s[n - 1], 2)} s` }) : null,
      run.sweep_id ? h("a", { href: `#/sweeps/${run.sweep_id}` }, `from sweep ${run.sweep_id}`)
        : null,
      run.restarts ? h("span", { id: "run-restarts", text:
        `resumed ${run.restarts}× (last from the checkpoint of step ${run.resumed_from_step})` })
        : null,
      h("span", { class: "muted", text: `took ${fmt.duration(run.started_at, run.finished_at)}` }),
      dataInfo(run.data, "run-data"));
    errorLine.textContent = run.error || "";
    config.textContent = JSON.stringify(run.config, null, 2);
    cancel.disabled = FINISHED.has(run.status);
    resume.disabled = !resumable(run);
    Plotly.react(plot, [
      { x: metrics.step, y: metrics.train_loss, mode: "lines", name: "train loss",
        line: { color: COLORS[0] } },
      { x: metrics.step, y: metrics.eval_loss, mode: "lines+markers", name: "eval loss",
        connectgaps: true, line: { color: COLORS[1] } },
    ], {
      title: { text: "Loss", font: { size: 14 } },
      xaxis: { title: { text: "step" } }, yaxis: { title: { text: "loss" } },
      margin: { l: 60, r: 10, t: 40, b: 50 }, uirevision: "run",
    }, PLOT_CONFIG);
    return !FINISHED.has(run.status);
  }

  return poll(refresh);
}

// --- start -----------------------------------------------------------------------------

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", () => {
  initToken();
  if (typeof Plotly === "undefined") {
    showBanner("Plotly.js did not load (/vendor/plotly.min.js): pip install plotly");
    return;
  }
  route();
});
