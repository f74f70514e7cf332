// The dashboard: the caller's jobs, live over GET /events (polling GET /jobs as the fallback),
// a form to create jobs and a cancel button. Every value from the server goes into the page as
// text (textContent), never as HTML.
import { Jobstream, JobstreamError, isTerminal } from "./jobstream.js";

const base = new URL(".", document.baseURI).pathname.replace(/\/$/, "");
const params = new URLSearchParams(location.search);
const TOKEN_KEY = "jobstream.token";
const MAX_ROWS = 200;

const $ = (id) => document.getElementById(id);
const jobs = new Map(); // id -> newest job seen
const rows = new Map(); // id -> <tr>
let client = null;
let watch = null;
let tasks = [];
let needToken = false;

function cell(row, text, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  if (text !== undefined) td.textContent = text;
  row.append(td);
  return td;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleTimeString() : "";
}

function eta(job) {
  if (isTerminal(job) || job.eta_seconds == null) return "";
  const seconds = Math.round(job.eta_seconds);
  return seconds >= 60 ? `${Math.floor(seconds / 60)}m ${seconds % 60}s` : `${seconds}s`;
}

function render(job) {
  let row = rows.get(job.id);
  if (!row) {
    row = document.createElement("tr");
    row.dataset.id = job.id;
    rows.set(job.id, row);
    $("jobs").prepend(row);
    while (rows.size > MAX_ROWS) {
      const [oldest] = rows.keys(); // Map keeps insertion order: the first is the oldest row
      rows.get(oldest).remove();
      rows.delete(oldest);
      jobs.delete(oldest);
    }
  }
  row.dataset.status = job.status;
  row.replaceChildren();
  const id = cell(row, undefined, "id");
  const link = document.createElement("a");
  link.href = "#";
  link.textContent = job.id.slice(0, 8);
  link.title = job.id;
  link.addEventListener("click", (event) => { event.preventDefault(); showDetails(job.id); });
  id.append(link);
  cell(row, job.type);
  const status = cell(row, job.status, "status");
  status.dataset.status = job.status;
  const bar = document.createElement("progress");
  bar.max = 100;
  bar.value = job.status === "SUCCESS" ? 100 : job.progress;
  const progress = cell(row);
  progress.append(bar, ` ${Math.round(bar.value)}%`);
  progress.className = "progress";
  cell(row, job.error ? `${job.error.type}: ${job.error.message}` : job.message || "", "message");
  cell(row, eta(job), "eta");
  cell(row, when(job.created_at), "muted");
  const actions = cell(row);
  if (!isTerminal(job)) {
    const cancel = document.createElement("button");
    cancel.textContent = job.cancel_requested ? "Cancelling" : "Cancel";
    cancel.disabled = job.cancel_requested;
    cancel.className = "cancel";
    cancel.addEventListener("click", () => cancelJob(job.id, cancel));
    actions.append(cancel);
  }
  $("empty").hidden = rows.size > 0;
  if (!$("details").hidden && $("details").dataset.id === job.id) showDetails(job.id);
}

function offer(job) {
  const known = jobs.get(job.id);
  if (known && known.version >= job.version) return;
  jobs.set(job.id, job);
  render(job);
  counts();
}

function counts() {
  const tally = {};
  for (const job of jobs.values()) tally[job.status] = (tally[job.status] || 0) + 1;
  $("counts").textContent = Object.entries(tally).map(([status, n]) => `${n} ${status.toLowerCase()}`).join(" · ");
}

function showDetails(id) {
  const job = jobs.get(id);
  if (!job) return;
  $("details").hidden = false;
  $("details").dataset.id = id;
  $("details-title").textContent = `Job ${id}`;
  $("details-body").textContent = JSON.stringify(job, null, 2);
}

function setMode(mode) {
  // A 401 from any request wins over the transport's state until a new token is given.
  if (mode === "unauthorized") needToken = true;
  const shown = needToken ? "unauthorized" : mode;
  $("mode").dataset.mode = shown;
  $("mode").textContent = { sse: "live", poll: "polling", reconnecting: "reconnecting",
    unauthorized: "token needed" }[shown] || shown;
  $("auth").hidden = !needToken && !sessionStorage.getItem(TOKEN_KEY);
}

async function cancelJob(id, button) {
  button.disabled = true;
  try {
    offer(await client.cancelJob(id));
  } catch (err) {
    button.disabled = false;
    $("create-error").textContent = err.message;
  }
}

function example(schema) {
  // A starting input from the task's JSON schema: its required properties with their defaults.
  const input = {};
  const ref = schema && schema.$ref && schema.$ref.match(/^#\/\$defs\/(.+)$/);
  if (ref && schema.$defs) schema = schema.$defs[ref[1]];
  for (const [name, property] of Object.entries((schema && schema.properties) || {})) {
    if ("default" in property) input[name] = property.default;
    else if ((schema.required || []).includes(name)) input[name] = property.type === "string" ? "" : 0;
  }
  return JSON.stringify(input);
}

async function loadTasks() {
  try {
    tasks = (await client.listTasks()).tasks;
  } catch (err) {
    if (err instanceof JobstreamError && err.status === 401) setMode("unauthorized");
    return;
  }
  const select = $("task-type");
  select.replaceChildren(...tasks.map((task) => {
    const option = document.createElement("option");
    option.value = task.name;
    option.textContent = task.name;
    option.title = task.description || "";
    return option;
  }));
  select.dispatchEvent(new Event("change"));
}

async function createJob(event) {
  event.preventDefault();
  $("create-error").textContent = "";
  let input;
  try {
    input = JSON.parse($("task-input").value || "{}");
  } catch {
    $("create-error").textContent = "The input is not valid JSON.";
    return;
  }
  $("create").disabled = true;
  try {
    const job = await client.createJob($("task-type").value, input, {
      delaySeconds: Number($("task-delay").value) || undefined,
    });
    offer(job);
  } catch (err) {
    $("create-error").textContent = err.message;
  } finally {
    $("create").disabled = false;
  }
}

function connect() {
  if (watch) watch.close();
  needToken = false;
  client = new Jobstream({
    baseUrl: base,
    token: sessionStorage.getItem(TOKEN_KEY),
    transport: params.get("transport") || "auto",
  });
  loadTasks();
  watch = client.watchAll({
    onJobs: (batch) => batch.forEach(offer),
    onUpdate: offer,
    onMode: setMode,
  });
}

$("task-type").addEventListener("change", () => {
  const task = tasks.find((t) => t.name === $("task-type").value);
  if (task) $("task-input").value = example(task.input_schema);
});
$("create-form").addEventListener("submit", createJob);
$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  if (token) sessionStorage.setItem(TOKEN_KEY, token); else sessionStorage.removeItem(TOKEN_KEY);
  connect();
});
connect();
