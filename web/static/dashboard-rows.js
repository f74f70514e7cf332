// How the dashboard shows one job: a table row on wide screens, a card on phones (the same
// cells; the page's CSS lays them out). Every value from the server goes in as text, never
// as HTML. The running clocks (elapsed time, ETA) are re-read every second by tick().

import { isTerminal } from "./jobstream.js";

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

export function duration(seconds) {
  const total = Math.max(0, Math.round(seconds));
  const hours = Math.floor(total / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  if (hours) return `${hours}h ${minutes}m`;
  if (minutes) return `${minutes}m ${total % 60}s`;
  return `${total}s`;
}

function element(tag, { className, text, children = [], ...attributes } = {}) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  node.append(...children);
  return node;
}

// Random hex near the id's end: a UUIDv7 starts with its creation time (the same for jobs
// created together) and ends with its partition (the same for every job on one Redis).
const shortId = (id) => id.slice(-11, -3);
const hidden = (text) => element("span", { className: "sr-only", text });
const cardLabel = (text) => element("span", { className: "card-label", text: `${text} ` });

function when(label, iso) {
  const time = element("time", { text: dateTime.format(new Date(iso)), datetime: iso });
  return element("span", { children: [`${label} `, time] });
}

// A clock that tick() keeps current: counting up from `since` or down to `until` (epoch ms).
function clock(className, { since, until }) {
  const attributes = since !== undefined ? { "data-since": since } : { "data-until": until };
  const node = element("span", { className, ...attributes });
  tickClock(node, Date.now());
  return node;
}

function tickClock(node, now) {
  if (node.dataset.since) node.textContent = duration((now - Number(node.dataset.since)) / 1000);
  else node.textContent = duration((Number(node.dataset.until) - now) / 1000);
}

export function tick(root, now = Date.now()) {
  for (const node of root.querySelectorAll("[data-since], [data-until]")) tickClock(node, now);
}

function times(job) {
  const lines = [when("Created", job.created_at)];
  if (job.status === "PENDING" && job.run_at) lines.push(when("Scheduled for", job.run_at));
  if (job.status === "PROCESSING" && job.started_at) {
    lines.push(element("span", { children: ["Running for ", clock("elapsed", { since: Date.parse(job.started_at) })] }));
  }
  if (isTerminal(job) && job.completed_at) {
    const line = when("Ended", job.completed_at);
    if (job.started_at) line.append(` · took ${duration((Date.parse(job.completed_at) - Date.parse(job.started_at)) / 1000)}`);
    lines.push(line);
  }
  return lines;
}

function eta(job, receivedAt) {
  if (isTerminal(job) || job.eta_seconds == null) return [];
  return [cardLabel("ETA"), clock("eta-left", { until: receivedAt + job.eta_seconds * 1000 })];
}

function typeAndLabels(job) {
  const labels = Object.entries(job.labels || {});
  if (!labels.length) return [job.type];
  const list = element("ul", { className: "labels", "aria-label": "Labels" });
  list.append(...labels.map(([key, value]) => element("li", { text: `${key}: ${value}` })));
  return [job.type, list];
}

function progress(job) {
  const short = shortId(job.id);
  const value = job.status === "SUCCESS" ? 100 : job.progress;
  const bar = element("progress", { max: "100", "aria-label": `Progress of job ${short}` });
  bar.value = value;
  return [bar, ` ${Math.round(value)}%`];
}

function buttons(job, actions) {
  const short = shortId(job.id);
  const details = element("button", {
    type: "button",
    title: job.id,
    "data-action": "details",
    children: [hidden("Details of job "), short],
  });
  details.addEventListener("click", () => actions.details(job.id, details));
  if (isTerminal(job)) return { details, cancel: [] };
  const cancel = element("button", {
    type: "button",
    className: "cancel",
    "data-action": "cancel",
    children: [job.cancel_requested ? "Cancelling" : "Cancel", hidden(` job ${short}`)],
  });
  if (job.cancel_requested) cancel.setAttribute("aria-disabled", "true");
  cancel.addEventListener("click", () => {
    if (cancel.getAttribute("aria-disabled") !== "true") actions.cancel(job.id, cancel);
  });
  return { details, cancel: [cancel] };
}

// The row's cells, in the table's column order. `actions` hands over the buttons' handlers:
// { details(id, button), cancel(id, button) }. A button that had the focus keeps it across
// the redraw (the details button takes it when the cancel button goes).
export function fillRow(row, job, receivedAt, actions) {
  const active = document.activeElement;
  const focused = row.contains(active) && active.dataset ? active.dataset.action : null;
  const { details, cancel } = buttons(job, actions);
  const message = job.error ? `${job.error.type}: ${job.error.message}` : job.message || "";
  row.dataset.status = job.status;
  row.replaceChildren(
    element("td", { className: "type", children: typeAndLabels(job) }),
    element("td", { className: "status", text: job.status, "data-status": job.status }),
    element("td", { className: "progress", children: progress(job) }),
    element("td", { className: "message", text: message }),
    element("td", { className: "eta", children: eta(job, receivedAt) }),
    element("td", { className: "times", children: times(job) }),
    element("td", { className: "owner", children: [cardLabel("Owner"), job.owner] }),
    element("td", { className: "id", children: [details] }),
    element("td", { className: "actions", children: cancel }),
  );
  if (focused) (row.querySelector(`[data-action="${focused}"]`) || details).focus();
}
