// Beacon's dashboard: plain browser JavaScript over the JSON API (no framework, no build step).
// The bearer token is asked for once (when an action needs it) and kept in this tab's sessionStorage:
// never in a URL, never in a log. Every error a person meets is shown as the API's sentence.
"use strict";

const TOKEN_KEY = "beacon-token";
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) node.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return node;
}

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = !message;
}

class ApiError extends Error {}

function askForToken(reason) {
  const form = $("#token-form");
  form.hidden = false;
  $("#token").focus();
  showError(reason);
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers["Authorization"] = "Bearer " + token;
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(options.json);
  }
  let response;
  try {
    response = await fetch(path, Object.assign({}, options, { headers }));
  } catch (e) {
    throw new ApiError("The server cannot be reached; is `beacon serve` running?");
  }
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
  if (response.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    askForToken(token ? "That token was refused; enter the server's BEACON_API_TOKEN."
                      : "This needs the API token (the server's BEACON_API_TOKEN).");
    throw new ApiError("");
  }
  if (!response.ok) throw new ApiError(sentence(body, response.status));
  return body;
}

function sentence(body, status) {
  const detail = body && body.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail) && detail.length) {
    return detail.map((d) => `${(d.loc || []).filter((x) => x !== "body").join(".")}: ${d.msg}`).join("; ");
  }
  return `The server answered ${status}.`;
}

async function guarded(fn) {
  try { await fn(); } catch (e) { if (e instanceof ApiError) { if (e.message) showError(e.message); } else throw e; }
}

function setupToken() {
  $("#token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("#token").value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    $("#token").value = "";
    $("#token-form").hidden = true;
    showError("");
    location.reload();  // the page starts over, now with the token
  });
  $("#forget-token").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); refreshTokenButton(); });
  refreshTokenButton();
}

function refreshTokenButton() { $("#forget-token").hidden = !sessionStorage.getItem(TOKEN_KEY); }

const pct = (v) => (v === null || v === undefined ? "–" : `${Math.round(100 * v)}%`);
const num = (v) => (v === null || v === undefined ? "–" : typeof v === "number" ? String(+v.toPrecision(3)) : String(v));
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "–");
const sql = (text) => "'" + String(text).replace(/'/g, "''") + "'";

// --- charts (inline SVG) -------------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function histogram(bins, label) {
  const w = 560, h = 150, chart = svg("svg", { class: "chart", viewBox: `0 0 ${w} ${h + 24}`, role: "img", "aria-label": `histogram of ${label}` });
  const top = Math.max(1, ...bins.map((b) => b.count)), bar = w / Math.max(1, bins.length);
  bins.forEach((b, i) => {
    const bh = (h - 4) * b.count / top, r = svg("rect", { x: i * bar + 1, y: h - bh, width: Math.max(1, bar - 2), height: bh });
    r.append(svg("title", {}, `${num(b.low)} – ${num(b.high)}: ${b.count}`));
    chart.append(r);
  });
  if (bins.length) {
    chart.append(svg("text", { x: 0, y: h + 20 }, num(bins[0].low)));
    chart.append(svg("text", { x: w, y: h + 20, "text-anchor": "end" }, num(bins[bins.length - 1].high)));
  }
  chart.append(svg("text", { x: w / 2, y: h + 20, "text-anchor": "middle" }, label));
  return chart;
}

function curve(points) {
  const w = 560, h = 170, last = points[points.length - 1].step || 1, topLoss = Math.max(1e-9, ...points.map((p) => p.loss));
  const chart = svg("svg", { class: "chart", viewBox: `0 0 ${w} ${h + 24}`, role: "img", "aria-label": "learning curve" });
  const line = (f, cls) => svg("polyline", { class: cls, points: points.map((p) => `${(w * p.step / last).toFixed(1)},${(h - (h - 4) * f(p)).toFixed(1)}`).join(" ") });
  chart.append(line((p) => p.learned, "learned"), line((p) => p.loss / topLoss, "loss"));
  chart.append(svg("text", { x: 0, y: h + 20 }, "step 0"), svg("text", { x: w, y: h + 20, "text-anchor": "end" }, `step ${last}`));
  const p = points[points.length - 1];
  return [el("p", { class: "muted" }, `learned (solid): ${pct(p.learned)} at step ${p.step}; loss (dashed, scaled to its maximum): ${num(p.loss)}`), chart];
}

function table(node, columns, rows) {
  node.replaceChildren(el("thead", {}, el("tr", {}, columns.map((c) => el("th", {}, c)))),
                       el("tbody", {}, rows.map((r) => el("tr", {}, r.map((v) => el("td", {}, v))))));
}

// --- the jobs page -------------------------------------------------------------------------------

async function jobsPage() {
  await guarded(fillJobForm);
  $("#new-job").addEventListener("submit", (event) => { event.preventDefault(); guarded(submitJob); });
  const tick = () => guarded(refreshJobs);
  await tick();
  setInterval(tick, 2000);
}

let schemas = null;
async function fillJobForm() {
  const openapi = await api("/openapi.json");
  schemas = openapi.components.schemas;
  for (const [section, name] of [["curate", "CurateConfig"], ["train", "TrainConfig"]]) {
    const box = $(`#${section}-fields`);
    box.replaceChildren();
    for (const [key, prop] of Object.entries(schemas[name].properties)) {
      if (key === "progress") continue;  // a job's stages log progress lines whatever this says
      const input = fieldFor(prop);
      if (!input) continue;
      input.name = `${section}.${key}`;
      input.dataset.default = JSON.stringify(prop.default ?? null);
      box.append(el("label", { title: prop.description || "" }, key, input, el("small", {}, prop.description || "")));
    }
  }
  const datasets = await api("/datasets?kind=raw&limit=200");
  const select = $("#dataset");
  select.replaceChildren(el("option", { value: "" }, "—"), datasets.data.map((d) => el("option", { value: d.id }, `${d.name} (${d.id})`)));
}

function fieldFor(prop) {
  const options = prop.enum || (prop.anyOf || []).flatMap((a) => a.enum || (a.const !== undefined ? [a.const] : []));
  const type = prop.type || (prop.anyOf || []).map((a) => a.type).find((t) => t && t !== "null");
  if (options && options.length) {
    const s = el("select", {}, options.map((o) => el("option", { value: o, selected: o === prop.default }, String(o))));
    return s;
  }
  const nullable = (prop.anyOf || []).some((a) => a.type === "null");
  if (type === "boolean" && nullable && prop.default == null) {  // unset means "as the dataset was probed"
    const s = el("select", {}, el("option", { value: "" }, "default"), el("option", { value: "true" }, "yes"),
                 el("option", { value: "false" }, "no"));
    s.dataset.kind = "optional-boolean";
    return s;
  }
  if (type === "boolean") return el("input", { type: "checkbox", checked: prop.default === true });
  if (type === "integer" || type === "number") return el("input", { type: "number", step: type === "integer" ? "1" : "any", value: prop.default ?? "", placeholder: prop.default === null ? "none" : "" });
  if (type === "string") return el("input", { type: "text", value: prop.default ?? "" });
  return null;  // lists and objects: the API and config files take them
}

function changedSettings(section) {
  const out = {};
  for (const input of document.querySelectorAll(`[name^="${section}."]`)) {
    const key = input.name.slice(section.length + 1), initial = JSON.parse(input.dataset.default);
    let value;
    if (input.type === "checkbox") value = input.checked;
    else if (input.dataset.kind === "optional-boolean") value = input.value === "" ? null : input.value === "true";
    else if (input.type === "number") value = input.value === "" ? null : Number(input.value);
    else value = input.value;
    if (JSON.stringify(value) !== JSON.stringify(initial) && !(value === "" && initial === null)) out[key] = value;
  }
  return out;
}

async function submitJob() {
  showError("");
  let datasetId = $("#dataset").value;
  const file = $("#file").files[0];
  if (file) {
    const form = new FormData();
    form.append("file", file);
    datasetId = (await api("/datasets", { method: "POST", body: form })).id;
  }
  if (!datasetId) { showError("Choose a file to upload or an uploaded dataset."); return; }
  const job = await api("/jobs", { method: "POST", json: { dataset_id: datasetId, curate: changedSettings("curate"), train: changedSettings("train") } });
  location.href = `/ui/jobs/${job.id}`;
}

async function refreshJobs() {
  const page = await api("/jobs?limit=50");
  $("#jobs-empty").hidden = page.count > 0;
  $("#jobs tbody").replaceChildren(...page.data.map((j) => el("tr", {},
    el("td", {}, el("a", { href: `/ui/jobs/${j.id}` }, j.id)),
    el("td", {}, el("span", { class: `badge ${TERMINAL.has(j.status) ? j.status : j.status === "queued" ? "" : "running"}` }, j.status)),
    el("td", {}, el("progress", { max: 1, value: j.progress, "aria-label": `progress ${pct(j.progress)}` }), ` ${pct(j.progress)}`),
    el("td", {}, j.scored_dataset_id ? el("a", { href: `/ui/datasets/${j.scored_dataset_id}` }, j.scored_dataset_id) : j.dataset_id),
    el("td", {}, when(j.created_at)),
    el("td", {}, TERMINAL.has(j.status) ? "" : el("button", { type: "button", onclick: () => guarded(() => cancel(j.id)) }, "Cancel")))));
}

async function cancel(jobId) {
  await api(`/jobs/${jobId}/cancel`, { method: "POST" });
}

// --- the job page --------------------------------------------------------------------------------

const FACT_COLUMNS = [
  ["prompt", "s.prompt"], ["target", "e.target"], ["base model said", "e.answer_before"], ["after training", "e.answer"],
  ["learned", "e.efficacy"], ["first learned step", "e.first_learned_step"], ["drift before", "e.drift_before"],
  ["drift after", "e.drift_after"], ["weight", "e.weight"], ["reason", "e.reason"], ["paraphrase", "e.paraphrase"]];
const FILTERS = { all: "true", not_learned: "e.kept and not e.efficacy", pushed_away: "e.pushed_away", filtered: "not e.kept" };
const PAGE = 50;
const factState = { order: "e.efficacy", desc: false, offset: 0, total: 0 };

async function jobPage(jobId) {
  let lastEvent = 0, done = false, shown = false;
  $("#cancel").addEventListener("click", () => guarded(() => cancel(jobId)));
  const timeline = $("#timeline");
  const tick = async () => {
    const job = await api(`/jobs/${jobId}`);
    $("#status").textContent = job.status;
    $("#status").className = `badge ${TERMINAL.has(job.status) ? job.status : "running"}`;
    $("#progress").value = job.progress;
    $("#stage").textContent = job.stage ? `stage: ${job.stage} · ${pct(job.progress)}` : "";
    $("#cancel").hidden = TERMINAL.has(job.status);
    $("#job-error").hidden = !job.error;
    $("#job-error").textContent = job.error ? `This job ${job.status}: ${job.error}` : "";
    if (job.scored_dataset_id) {
      const link = $("#dataset-link");
      link.hidden = false;
      link.href = `/ui/datasets/${job.scored_dataset_id}`;
    }
    const events = await api(`/jobs/${jobId}/events?after=${lastEvent}`);
    for (const e of events.data) {
      timeline.append(el("li", {}, el("strong", {}, e.kind), ` ${e.message} `, el("span", { class: "muted" }, when(e.at))));
      lastEvent = e.id;
    }
    const points = (await api(`/jobs/${jobId}/curve`)).points;
    if (points.length) $("#curve").replaceChildren(...curve(points));
    if (job.status === "succeeded" && !shown) { shown = true; await showResults(job); }
    done = TERMINAL.has(job.status);
  };
  const loop = async () => { await guarded(tick); if (!done) setTimeout(loop, 1500); };
  loop();
}

async function showResults(job) {
  const m = job.metrics || {};
  $("#results").hidden = false;
  $("#summary").textContent = m.summary || "";
  const groups = [["kept (trained)", m.kept], ["filtered (untrained)", m.filtered],
                  ...Object.entries(m.by_drift_quartile || {}).map(([q, g]) => [`kept, drift ${q}`, g])].filter(([, g]) => g && g.n);
  table($("#metrics"), ["facts", "n", "efficacy", "known before", "paraphrase", "locality", "bleed", "pushed away"],
        groups.map(([name, g]) => [name, String(g.n), pct(g.efficacy), pct(g.efficacy_before), pct(g.paraphrase), pct(g.locality), pct(g.locality_bleed), pct(g.pushed_away)]));
  $("#facts thead").replaceChildren(el("tr", {}, FACT_COLUMNS.map(([label, column]) =>
    el("th", { "aria-sort": "none" }, el("button", { type: "button", onclick: () => sortBy(job, column) }, label)))));
  $("#filter").addEventListener("change", () => { factState.offset = 0; guarded(() => loadFacts(job)); });
  let timer = null;
  $("#search").addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(() => { factState.offset = 0; guarded(() => loadFacts(job)); }, 250); });
  $("#prev").addEventListener("click", () => { factState.offset = Math.max(0, factState.offset - PAGE); guarded(() => loadFacts(job)); });
  $("#next").addEventListener("click", () => { if (factState.offset + PAGE < factState.total) { factState.offset += PAGE; guarded(() => loadFacts(job)); } });
  await loadFacts(job);
}

function sortBy(job, column) {
  factState.desc = factState.order === column ? !factState.desc : false;
  factState.order = column;
  factState.offset = 0;
  guarded(() => loadFacts(job));
}

async function loadFacts(job) {
  const q = $("#search").value.trim();
  const search = q ? ` and (s.prompt ilike ${sql("%" + q + "%")} or e.target ilike ${sql("%" + q + "%")} or e.answer ilike ${sql("%" + q + "%")})` : "";
  const where = `where ${FILTERS[$("#filter").value]}${search}`;
  const from = "from eval e join scored s using (fact_id)";
  const path = `/datasets/${job.scored_dataset_id}/query?job_id=${job.id}`;
  const columns = FACT_COLUMNS.map(([, c]) => c).join(", ");
  // One query for the page and the count of all matching rows: each query is a process of its own.
  const answer = await api(path, { method: "POST", json: { sql:
    `select ${columns}, count(*) over () as total ${from} ${where} order by ${factState.order} ${factState.desc ? "desc" : "asc"} nulls last, e.fact_id limit ${PAGE} offset ${factState.offset}` } });
  if (!answer.rows.length && factState.offset > 0) { factState.offset = 0; return loadFacts(job); }
  factState.total = answer.rows.length ? answer.rows[0][FACT_COLUMNS.length] : 0;
  $("#facts tbody").replaceChildren(...answer.rows.map((r) => el("tr", {}, r.slice(0, FACT_COLUMNS.length).map((v, i) =>
    el("td", {}, i === 4 ? (v ? "yes" : "no") : i === 10 ? pct(v) : typeof v === "number" ? num(v) : v ?? "–")))));
  document.querySelectorAll("#facts th").forEach((th, i) => th.setAttribute("aria-sort",
    FACT_COLUMNS[i][1] === factState.order ? (factState.desc ? "descending" : "ascending") : "none"));
  const pages = Math.max(1, Math.ceil(factState.total / PAGE));
  $("#fact-count").textContent = `${factState.total} facts`;
  $("#page-of").textContent = `page ${Math.floor(factState.offset / PAGE) + 1} of ${pages}`;
}

// --- the dataset page ----------------------------------------------------------------------------

async function datasetPage(datasetId) {
  const meta = await api(`/datasets/${datasetId}`);
  $("#dataset-meta").textContent = `${meta.name} · ${meta.rows ?? "?"} rows · created ${when(meta.created_at)}`;
  const stats = await api(`/datasets/${datasetId}/stats`);
  table($("#reasons"), ["reason", "facts", "drift mean", "interference mean"],
        Object.entries(stats.by_reason).map(([r, v]) => [r, String(v.n), num(v.drift_mean), num(v.interference_mean)]));
  const charts = [histogram(stats.drift.histogram, `drift (${stats.drift.definition})`), histogram(stats.interference.histogram, "interference")];
  if (stats.risk) charts.push(histogram(stats.risk.histogram, "risk"));
  $("#charts").replaceChildren(...charts.map((c) => el("figure", {}, c)));
  table($("#conflicts"), ["cosine", "prompt", "target", "prompt", "target"],
        stats.top_conflicts.map((p) => [num(p.interference), p.a.prompt, p.a.target, p.b.prompt, p.b.target]));
  const rejected = await api(`/datasets/${datasetId}/query`, { method: "POST", json: { sql: "select source, position, stage, error, left(raw, 120) as raw from rejected order by source, position limit 100" } });
  table($("#rejected"), rejected.columns, rejected.rows.map((r) => r.map((v) => String(v ?? ""))));
  $("#sql-form").addEventListener("submit", (event) => { event.preventDefault(); runSql(datasetId); });
}

async function runSql(datasetId) {
  const box = $("#sql-error");
  box.hidden = true;
  try {
    const answer = await api(`/datasets/${datasetId}/query`, { method: "POST", json: { sql: $("#sql").value } });
    table($("#sql-result"), answer.columns, answer.rows.map((r) => r.map((v) => (v !== null && typeof v === "object" ? JSON.stringify(v) : String(v ?? "NULL")))));
  } catch (e) {
    if (!(e instanceof ApiError)) throw e;
    if (e.message) { box.textContent = `Query refused: ${e.message}`; box.hidden = false; }
    $("#sql-result").replaceChildren();
  }
}

// --- start ----------------------------------------------------------------------------------------

function start() {
  const page = document.body.dataset.page, item = document.body.dataset.item;
  if (page === "jobs") return jobsPage();
  if (page === "job") return jobPage(item);
  if (page === "dataset") return guarded(() => datasetPage(item));
}

setupToken();
start();
