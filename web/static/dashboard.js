// The dashboard: the caller's jobs, live over GET /events (polling GET /jobs as the fallback,
// back to live once SSE works again), a form to create jobs, cancel buttons and a job's
// details. Rows are drawn by dashboard-rows.js; every value from the server goes into the
// page as text, never as HTML.
import { Jobstream, JobstreamError } from "./jobstream.js";
import { fillRow, tick } from "./dashboard-rows.js";

const base = new URL(".", document.baseURI).pathname.replace(/\/$/, "");
const params = new URLSearchParams(location.search);
const TOKEN_KEY = "jobstream.token";
const MAX_ROWS = 200;
const DEFAULT_TASK = "demo.sleep";

const $ = (id) => document.getElementById(id);
const jobs = new Map(); // id -> { job: the newest state seen, receivedAt }
const rows = new Map(); // id -> <tr>
let client = null;
let watch = null;
let tasks = [];
let needToken = false;
let admin = false;
let detailsOpener = null; // the button that opened the details, to give focus back to

const rowActions = { details: showDetails, cancel: cancelJob };

function rowOf(id) {
  let row = rows.get(id);
  if (row) return row;
  row = document.createElement("tr");
  row.dataset.id = id;
  rows.set(id, row);
  $("jobs").prepend(row);
  while (rows.size > MAX_ROWS) {
    const [oldest] = rows.keys(); // Map keeps insertion order: the first is the oldest row
    rows.get(oldest).remove();
    rows.delete(oldest);
    jobs.delete(oldest);
  }
  return row;
}

function offer(job) {
  const known = jobs.get(job.id);
  if (known && known.job.version >= job.version) return;
  const seen = { job, receivedAt: Date.now() };
  jobs.set(job.id, seen);
  fillRow(rowOf(job.id), job, seen.receivedAt, rowActions);
  if (!$("details").hidden && $("details").dataset.id === job.id) fillDetails(job);
  summarize();
}

// Everything that depends on all the jobs at once: counts, the "keeps running" line, the
// empty list, and the owner column (for an admin, or whenever jobs of several owners show).
function summarize() {
  const tally = {};
  const owners = new Set();
  for (const { job } of jobs.values()) {
    tally[job.status] = (tally[job.status] || 0) + 1;
    owners.add(job.owner);
  }
  $("counts").textContent = Object.entries(tally).map(([status, n]) => `${n} ${status.toLowerCase()}`).join(" · ");
  $("keeps-running").hidden = !(tally.PENDING || tally.PROCESSING);
  $("empty").hidden = rows.size > 0;
  document.body.classList.toggle("show-owner", admin || owners.size > 1);
}

function fillDetails(job) {
  $("details").dataset.id = job.id;
  $("details-title").textContent = `Job ${job.id}`;
  $("details-body").textContent = JSON.stringify(job, null, 2);
}

function showDetails(id, opener) {
  const seen = jobs.get(id);
  if (!seen) return;
  fillDetails(seen.job);
  $("details").hidden = false;
  detailsOpener = opener;
  $("details-title").focus();
}

function closeDetails() {
  $("details").hidden = true;
  const opener = detailsOpener;
  detailsOpener = null;
  if (opener && opener.isConnected) opener.focus();
}

function setMode(mode) {
  // A 401 from any request wins over the transport's state until a new token is given.
  if (mode === "unauthorized") needToken = true;
  const shown = needToken ? "unauthorized" : mode;
  $("mode").dataset.mode = shown;
  $("mode").textContent = { sse: "live", poll: "polling", reconnecting: "reconnecting",
    unauthorized: "token needed" }[shown] || shown;
  $("auth").hidden = !needToken && !sessionStorage.getItem(TOKEN_KEY);
  $("auth-title").textContent = needToken ? "Sign in" : "Switch user";
}

async function cancelJob(id, button) {
  button.setAttribute("aria-disabled", "true"); // not `disabled`: that would drop the focus
  try {
    offer(await client.cancelJob(id));
  } catch (err) {
    button.removeAttribute("aria-disabled");
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

// The task the form starts on: the demo that shows progress, else the first that is not
// meant to fail.
function defaultTask(names) {
  return names.find((name) => name === DEFAULT_TASK) || names.find((name) => !/fail/i.test(name)) || names[0];
}

async function loadTasks(forClient) {
  let listed;
  try {
    listed = (await forClient.listTasks()).tasks;
  } catch (err) {
    if (err instanceof JobstreamError && err.status === 401) setMode("unauthorized");
    return;
  }
  if (forClient !== client) return; // the token changed meanwhile
  tasks = listed;
  const select = $("task-type");
  select.replaceChildren(...tasks.map((task) => {
    const option = document.createElement("option");
    option.value = task.name;
    option.textContent = task.name;
    option.title = task.description || "";
    return option;
  }));
  select.value = defaultTask(tasks.map((task) => task.name)) || "";
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
  // Not `disabled` while it works: a disabled button would drop the keyboard's focus.
  if ($("create").getAttribute("aria-disabled") === "true") return;
  $("create").setAttribute("aria-disabled", "true");
  try {
    const job = await client.createJob($("task-type").value, input, {
      delaySeconds: Number($("task-delay").value) || undefined,
    });
    offer(job);
  } catch (err) {
    $("create-error").textContent = err.message;
  } finally {
    $("create").removeAttribute("aria-disabled");
  }
}

// Whether the bearer token says its holder is an admin (the default "roles" claim). Only a
// hint for the owner column: the server decides what the token may see.
function tokenSaysAdmin(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const roles = JSON.parse(atob(payload)).roles;
    return Array.isArray(roles) && roles.includes("admin");
  } catch {
    return false;
  }
}

// Start over with the token in sessionStorage: nothing the previous user saw stays on screen.
function connect() {
  if (watch) watch.close();
  needToken = false;
  jobs.clear();
  rows.clear();
  $("jobs").replaceChildren();
  $("details").hidden = true;
  $("create-error").textContent = "";
  const token = sessionStorage.getItem(TOKEN_KEY);
  admin = Boolean(token) && tokenSaysAdmin(token);
  summarize();
  client = new Jobstream({ baseUrl: base, token, transport: params.get("transport") || "auto" });
  loadTasks(client);
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
  $("token").value = "";
  connect();
});
$("details-close").addEventListener("click", closeDetails);
$("details").addEventListener("keydown", (event) => { if (event.key === "Escape") closeDetails(); });
setInterval(() => tick($("jobs")), 1000);
connect();
