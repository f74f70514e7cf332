// The operator page: queues and workers, refreshed every 2 s from GET /queues and GET /workers.
// Admins only (any user in the no-auth mode); the bearer token is the jobs page's, kept in
// this tab's sessionStorage. Every value is written as text, never as HTML.
const TOKEN_KEY = "jobstream.token";
const REFRESH_MS = 2000;
const $ = (id) => document.getElementById(id);

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function row(cells) {
  const tr = document.createElement("tr");
  tr.append(...cells);
  return tr;
}

function seconds(value) {
  if (!value) return "0 s";
  return value < 90 ? `${value.toFixed(1)} s` : `${Math.round(value / 60)} min`;
}

async function api(path) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const response = await fetch(path, { headers: token ? { Authorization: `Bearer ${token}` } : {} });
  if (response.status === 401 || response.status === 403) {
    $("auth").hidden = false;
    throw new Error(response.status === 401 ? "a token is needed" : "this token is not an admin's");
  }
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

function showQueues(queues) {
  $("queues").replaceChildren(...queues.map((q) => {
    const oldest = cell(seconds(q.oldest_waiting_seconds), "num");
    if (q.oldest_waiting_seconds > 30) oldest.classList.add("warn");
    return row([
      cell(q.name), cell(q.waiting, "num"), oldest, cell(q.lag, "num"), cell(q.in_flight, "num"),
      cell(`${q.busy_slots} / ${q.worker_slots}`, "num"), cell(q.delayed, "num"), cell(q.dead, "num"),
    ]);
  }));
}

function showWorkers(workers) {
  const now = Date.now();
  $("worker-count").textContent = `(${workers.length})`;
  $("workers").replaceChildren(...workers.map((w) => {
    const busy = Object.values(w.busy || {}).reduce((a, b) => a + b, 0);
    const c = w.counters;
    return row([
      cell(w.consumer, "id"), cell(`${w.host} / ${w.pid}`), cell(w.queues.join(", ")),
      cell(`${busy} / ${w.slots}`, "num"), cell(w.running.join(" ") || "-", "id"),
      cell(`${c.succeeded} / ${c.failed} / ${c.retried}`, "num"),
      cell(`${Math.max(0, (now - w.seen_at_ms) / 1000).toFixed(0)} s ago`, "num"),
    ]);
  }));
}

async function refresh() {
  try {
    const [queues, workers] = await Promise.all([api("queues"), api("workers")]);
    showQueues(queues);
    showWorkers(workers);
    $("error").textContent = "";
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    $("error").textContent = error.message;
  }
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  if (token) sessionStorage.setItem(TOKEN_KEY, token); else sessionStorage.removeItem(TOKEN_KEY);
  $("auth").hidden = true;
  refresh();
});

refresh();
setInterval(refresh, REFRESH_MS);
