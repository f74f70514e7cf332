// jobstream browser client: create jobs and follow them, over SSE with a polling fallback.
// Dependency-free ES modules, no build step; types in jobstream.d.ts.
//
//   import { Jobstream } from "/static/jobstream.js";
//   const js = new Jobstream({ token });            // token: a bearer JWT, or null (auth "none")
//   const job = await js.createJob("demo.sleep", { seconds: 3, steps: 6 });
//   const done = await js.follow(job, { persist: true, onUpdate: (j) => render(j) });
//   // after a reload:  const ended = await js.resumeAll({ onUpdate: (j) => render(j) });
//
// follow() opens GET /jobs/{id}/events with EventSource (carrying a short-lived stream token,
// never the bearer token, in its URL). When SSE cannot be had (the stream does not open within
// `sseOpenTimeoutMs`, the server refuses it, or it fails `sseMaxErrors` times in a row), it
// long-polls GET /jobs/{id}?wait= with If-None-Match, honouring Retry-After, and tries SSE
// again after `sseRetryMs` (doubling up to `sseRetryMaxMs`) until it works. When the page
// comes back into view or online it catches up with one request. Updates are passed on only
// when their `version` is newer, so the transports never make a job go backwards.

import { JobstreamError, childController } from "./basics.js";
import { FeedWatch } from "./feed.js";
import { JobFollow } from "./follow.js";
import { SavedJobs, defaultStorage } from "./saved-jobs.js";

export { JobstreamError, JobstreamTimeoutError, isTerminal } from "./basics.js";

export class Jobstream {
  // baseUrl: where the API lives ("" = this origin's root; "/api" for a mounted app).
  // token: bearer JWT or null. transport: "auto" (SSE, then polling), "sse" or "poll".
  // storage: where `persist` keeps jobs (localStorage by default; null: nowhere).
  constructor({
    baseUrl = "",
    token = null,
    transport = "auto",
    sseOpenTimeoutMs = 5000,
    sseMaxErrors = 3,
    sseRetryMs = 2000,
    sseRetryMaxMs = 60000,
    pollWaitSeconds = 25,
    pollIntervalMs = 1000,
    storage = defaultStorage(),
    storageKey,
  } = {}) {
    this.baseUrl = baseUrl.replace(/\/$/, "");
    this.token = token;
    this.transport = transport;
    this.sseOpenTimeoutMs = sseOpenTimeoutMs;
    this.sseMaxErrors = sseMaxErrors;
    this.sseRetryMs = sseRetryMs;
    this.sseRetryMaxMs = sseRetryMaxMs;
    this.pollWaitSeconds = pollWaitSeconds;
    this.pollIntervalMs = pollIntervalMs;
    this.savedJobs = new SavedJobs(storage, storageKey || `jobstream.jobs:${this.baseUrl || "/"}`);
  }

  url(path) {
    return this.baseUrl + path;
  }

  async request(method, path, { body, headers = {}, signal } = {}) {
    const all = { Accept: "application/json", ...headers };
    if (this.token) all.Authorization = `Bearer ${this.token}`;
    if (body !== undefined) all["Content-Type"] = "application/json";
    const response = await fetch(this.url(path), {
      method,
      headers: all,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: "no-store",
    });
    if (response.status >= 400) {
      let problem = null;
      try { problem = await response.json(); } catch { /* not JSON */ }
      throw new JobstreamError(response.status, problem);
    }
    return response;
  }

  async json(method, path, options) {
    const response = await this.request(method, path, options);
    return response.status === 204 ? null : response.json();
  }

  // POST /jobs: the job as created (202), with `stream_token` when the server mints one.
  createJob(type, input = {}, { delaySeconds, runAt, timeout, labels, callbackUrl, owner, idempotencyKey, signal } = {}) {
    const options = {
      delay_seconds: delaySeconds,
      run_at: runAt instanceof Date ? runAt.toISOString() : runAt,
      timeout,
      labels,
      callback_url: callbackUrl,
      owner,
    };
    const body = { type, input };
    for (const [name, value] of Object.entries(options)) if (value != null) body[name] = value;
    const headers = idempotencyKey ? { "Idempotency-Key": idempotencyKey } : {};
    return this.json("POST", "/jobs", { body, headers, signal });
  }

  getJob(id, { signal } = {}) {
    return this.json("GET", `/jobs/${encodeURIComponent(id)}`, { signal });
  }

  // GET /jobs: newest first; pass `next_cursor` back as `cursor` for the next page.
  listJobs({ status, type, labels, owner, limit = 20, cursor, signal } = {}) {
    const query = new URLSearchParams({ limit: String(limit) });
    if (status) query.set("status", status);
    if (type) query.set("type", type);
    if (owner) query.set("owner", owner);
    if (cursor) query.set("cursor", cursor);
    for (const [key, value] of Object.entries(labels || {})) query.append("label", `${key}:${value}`);
    return this.json("GET", `/jobs?${query}`, { signal });
  }

  // GET /jobs/{id}/result: { id, status, result } (result null until SUCCESS); a JobstreamError
  // with status 409 (and the job's error in `problem.error`) if it ended FAILURE or CANCELLED.
  getResult(id, { signal } = {}) {
    return this.json("GET", `/jobs/${encodeURIComponent(id)}/result`, { signal });
  }

  cancelJob(id, { signal } = {}) {
    return this.json("POST", `/jobs/${encodeURIComponent(id)}/cancel`, { signal });
  }

  listTasks({ signal } = {}) {
    return this.json("GET", "/tasks", { signal });
  }

  // The URL an EventSource opens for `path` ("/jobs/{id}/events" or "/events"): with a
  // stream token when we hold a bearer token (EventSource cannot send headers).
  async streamUrl(path, streamToken, tokenPath) {
    if (!streamToken && this.token) {
      const grant = await this.json("POST", tokenPath);
      streamToken = grant.token;
    }
    return this.url(path) + (streamToken ? `?token=${encodeURIComponent(streamToken)}` : "");
  }

  // Follow one job until it ends. `job` is a job id or a job (e.g. createJob's answer, whose
  // stream_token is then used). onUpdate(job, how) gets every newer state ("initial", "sse",
  // "poll" or "catch-up"); onMode(mode) is told "sse" or "poll" as the transport changes.
  // persist: keep the job in localStorage until it ends, for resumeAll() after a reload.
  // timeoutMs: give up, rejecting with a JobstreamTimeoutError (the job keeps running).
  // Resolves with the terminal job; rejects on abort (signal), on timeout, or when the job
  // cannot be read (a JobstreamError: 404, 401). Every request stops when it settles.
  follow(job, options = {}) {
    return new JobFollow(this, job, options).run();
  }

  // Follow every job saved by follow({ persist: true }) (in this page or an earlier one);
  // resolves with their final states. A job the server no longer knows (404: expired, or
  // another user's) is forgotten and left out. On any other failure every follow stops and
  // the promise rejects.
  async resumeAll({ onUpdate, onMode, signal, timeoutMs } = {}) {
    const controller = childController(signal); // aborted at the end, which lets go of `signal`
    const follow = (saved) =>
      this.follow(saved.id, { persist: true, onUpdate, onMode, timeoutMs, signal: controller.signal })
        .catch((err) => {
          if (err instanceof JobstreamError && err.status === 404) return null;
          controller.abort(err);
          throw err;
        });
    try {
      const ended = await Promise.all(this.persisted().map(follow));
      return ended.filter((job) => job !== null);
    } finally {
      controller.abort();
    }
  }

  // The jobs follow({ persist: true }) saved and that have not ended yet: [{ id, type, savedAt }].
  persisted() {
    return this.savedJobs.list();
  }

  // Stop keeping a saved job (it is not cancelled).
  forget(id) {
    this.savedJobs.remove(id);
  }

  // Follow all of the caller's jobs (the dashboard): GET /events, or GET /jobs every few
  // seconds while SSE is not working. onJobs(jobs, how) gets a snapshot (newest last),
  // onUpdate(job, how) each change, onMode(mode) "sse", "poll", "reconnecting" or
  // "unauthorized". Returns { mode, close() }.
  watchAll(options = {}) {
    return new FeedWatch(this, options).start();
  }
}
