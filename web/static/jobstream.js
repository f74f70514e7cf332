// jobstream browser client: create jobs and follow them, over SSE with a polling fallback.
//
//   import { Jobstream } from "/static/jobstream.js";
//   const js = new Jobstream({ token });            // token: a bearer JWT, or null (auth "none")
//   const job = await js.createJob("demo.sleep", { seconds: 3, steps: 6 });
//   const done = await js.follow(job, { onUpdate: (j) => render(j) });   // resolves on the end state
//
// follow() opens GET /jobs/{id}/events with EventSource (carrying a short-lived stream token,
// never the bearer token, in its URL). When SSE cannot be had (the stream does not open within
// `sseOpenTimeoutMs`, the server refuses it, or it keeps failing without delivering anything),
// it falls back to long polling GET /jobs/{id}?wait= with If-None-Match, honouring Retry-After.
// Updates are passed on only when their `version` is newer, so the two transports never make a
// job go backwards.

const TERMINAL = new Set(["SUCCESS", "FAILURE", "CANCELLED"]);

export function isTerminal(job) {
  return TERMINAL.has(job.status);
}

export class JobstreamError extends Error {
  // A problem+json answer: `status`, `problem` (the parsed body, or null).
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.name = "JobstreamError";
    this.status = status;
    this.problem = problem;
  }
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal && signal.aborted) return reject(signal.reason);
    const timer = setTimeout(resolve, ms);
    if (signal) {
      signal.addEventListener("abort", () => { clearTimeout(timer); reject(signal.reason); }, { once: true });
    }
  });
}

function retryAfterMs(response, fallbackMs) {
  const value = Number(response.headers.get("Retry-After"));
  return Number.isFinite(value) && value >= 0 ? value * 1000 : fallbackMs;
}

export class Jobstream {
  // baseUrl: where the API lives ("" = this origin's root; "/api" for a mounted app).
  // token: bearer JWT or null. transport: "auto" (SSE, then polling), "sse" or "poll".
  constructor({
    baseUrl = "",
    token = null,
    transport = "auto",
    sseOpenTimeoutMs = 5000,
    sseMaxErrors = 3,
    pollWaitSeconds = 25,
    pollIntervalMs = 1000,
  } = {}) {
    this.baseUrl = baseUrl.replace(/\/$/, "");
    this.token = token;
    this.transport = transport;
    this.sseOpenTimeoutMs = sseOpenTimeoutMs;
    this.sseMaxErrors = sseMaxErrors;
    this.pollWaitSeconds = pollWaitSeconds;
    this.pollIntervalMs = pollIntervalMs;
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
  createJob(type, input = {}, { delaySeconds, idempotencyKey, signal } = {}) {
    const body = { type, input };
    if (delaySeconds) body.delay_seconds = delaySeconds;
    const headers = idempotencyKey ? { "Idempotency-Key": idempotencyKey } : {};
    return this.json("POST", "/jobs", { body, headers, signal });
  }

  getJob(id, { signal } = {}) {
    return this.json("GET", `/jobs/${encodeURIComponent(id)}`, { signal });
  }

  listJobs({ status, type, limit = 20, cursor, signal } = {}) {
    const query = new URLSearchParams({ limit: String(limit) });
    if (status) query.set("status", status);
    if (type) query.set("type", type);
    if (cursor) query.set("cursor", cursor);
    return this.json("GET", `/jobs?${query}`, { signal });
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
  // stream_token is then used). onUpdate(job, mode) gets every newer state; onMode(mode) is told
  // "sse" or "poll" when the transport is chosen. Resolves with the terminal job; rejects on
  // abort (signal) or when the job cannot be read (404, 401).
  async follow(job, { onUpdate = () => {}, onMode = () => {}, signal } = {}) {
    const id = typeof job === "string" ? job : job.id;
    let latest = typeof job === "string" ? null : job;
    const offer = (candidate, mode) => {
      if (latest && latest.status && candidate.version <= latest.version) return false;
      latest = candidate;
      onUpdate(candidate, mode);
      return true;
    };
    if (latest && latest.status && latest.version !== undefined) onUpdate(latest, "initial");
    if (latest && isTerminal(latest)) return latest;
    if (this.transport !== "poll" && typeof EventSource !== "undefined") {
      const done = await this.followSse(id, latest && latest.stream_token, offer, onMode, signal);
      if (done) return done;
    }
    onMode("poll");
    return this.followPoll(id, () => latest, offer, signal);
  }

  // Resolves with the terminal job, or with null when SSE is not working (fall back).
  async followSse(id, streamToken, offer, onMode, signal) {
    const path = `/jobs/${encodeURIComponent(id)}/events`;
    let url;
    try {
      url = await this.streamUrl(path, streamToken, `/jobs/${encodeURIComponent(id)}/stream-token`);
    } catch (err) {
      if (err instanceof JobstreamError && err.status === 404) throw err;
      return null;
    }
    return new Promise((resolve, reject) => {
      const source = new EventSource(url);
      let delivered = false;
      let errors = 0;
      let finished = false;
      const finish = (value, error) => {
        if (finished) return;
        finished = true;
        clearTimeout(openTimer);
        source.close();
        if (signal) signal.removeEventListener("abort", onAbort);
        if (error) reject(error); else resolve(value);
      };
      const onAbort = () => finish(null, signal.reason);
      if (signal) {
        if (signal.aborted) return finish(null, signal.reason);
        signal.addEventListener("abort", onAbort, { once: true });
      }
      const openTimer = setTimeout(() => { if (!delivered) finish(null); }, this.sseOpenTimeoutMs);
      source.addEventListener("job", (event) => {
        let job;
        try { job = JSON.parse(event.data); } catch { return; }
        if (!delivered) { delivered = true; clearTimeout(openTimer); onMode("sse"); }
        errors = 0;
        offer(job, "sse");
        if (isTerminal(job)) finish(job);
      });
      source.addEventListener("error", () => {
        // CLOSED: the server refused the stream (401/404/503) or answered 204; the browser
        // will not retry, so polling takes over (it also reports a 404 properly).
        errors += 1;
        if (source.readyState === EventSource.CLOSED || errors >= this.sseMaxErrors) finish(null);
      });
    });
  }

  async followPoll(id, latest, offer, signal) {
    const path = `/jobs/${encodeURIComponent(id)}`;
    for (;;) {
      if (signal && signal.aborted) throw signal.reason;
      const current = latest();
      const headers = {};
      let query = "";
      if (current && current.version !== undefined && current.status) {
        headers["If-None-Match"] = `"${current.version}"`;
        query = `?wait=${this.pollWaitSeconds}`;
      }
      let response;
      const asked = Date.now();
      try {
        response = await this.request("GET", path + query, { headers, signal });
      } catch (err) {
        if (err instanceof JobstreamError && ![429, 502, 503, 504].includes(err.status)) throw err;
        if (!(err instanceof JobstreamError) && signal && signal.aborted) throw err;
        await sleep(this.pollIntervalMs, signal); // a network error or an overloaded server
        continue;
      }
      if (response.status === 200) {
        const job = await response.json();
        offer(job, "poll");
        if (isTerminal(job)) return job;
      }
      // After news (200) or a long poll that waited, ask again at once (the next request
      // long-polls); a 304 that came back at once (the server cannot wait right now)
      // waits Retry-After, so a client never spins.
      const waited = Date.now() - asked >= this.pollIntervalMs;
      const again = response.status === 200 || waited ? 0 : retryAfterMs(response, this.pollIntervalMs);
      await sleep(again, signal);
    }
  }

  // Follow all of the caller's jobs (the dashboard): GET /events, or GET /jobs every few
  // seconds when SSE is not working. onJobs(jobs, mode) gets a snapshot (newest last),
  // onUpdate(job, mode) each change. Returns { close(), mode }.
  watchAll({ onJobs = () => {}, onUpdate = () => {}, onMode = () => {}, limit = 50 } = {}) {
    const controller = new AbortController();
    const watch = { mode: null, close: () => controller.abort() };
    const setMode = (mode) => { watch.mode = mode; onMode(mode); };
    const poll = async () => {
      setMode("poll");
      while (!controller.signal.aborted) {
        let wait = this.pollIntervalMs * 2;
        try {
          const page = await this.listJobs({ limit, signal: controller.signal });
          onJobs(page.jobs.slice().reverse(), "poll");
        } catch (err) {
          if (controller.signal.aborted) return;
          if (err instanceof JobstreamError && err.status === 401) { setMode("unauthorized"); return; }
          wait = this.pollIntervalMs * 5;
        }
        try { await sleep(wait, controller.signal); } catch { return; }
      }
    };
    const sse = async () => {
      if (this.transport === "poll" || typeof EventSource === "undefined") return poll();
      let url;
      try {
        url = await this.streamUrl("/events", null, "/events/stream-token");
      } catch (err) {
        if (err instanceof JobstreamError && err.status === 401) { setMode("unauthorized"); return; }
        return poll();
      }
      const source = new EventSource(url);
      let delivered = false;
      let errors = 0;
      let batch = [];
      let flush = null;
      const fallback = () => { source.close(); clearTimeout(openTimer); if (!controller.signal.aborted) poll(); };
      const openTimer = setTimeout(() => { if (!delivered) fallback(); }, this.sseOpenTimeoutMs);
      controller.signal.addEventListener("abort", () => { source.close(); clearTimeout(openTimer); }, { once: true });
      const opened = () => {
        errors = 0;
        if (!delivered) { delivered = true; clearTimeout(openTimer); }
        if (watch.mode !== "sse") setMode("sse");
      };
      source.addEventListener("open", opened); // the feed may have no job to send yet
      source.addEventListener("job", (event) => {
        let job;
        try { job = JSON.parse(event.data); } catch { return; }
        opened();
        // Events that arrive in one burst (the snapshot) are handed over together.
        batch.push(job);
        if (flush === null) {
          flush = setTimeout(() => {
            const jobs = batch;
            batch = [];
            flush = null;
            if (jobs.length === 1) onUpdate(jobs[0], "sse"); else onJobs(jobs, "sse");
          }, 0);
        }
      });
      source.addEventListener("error", () => {
        errors += 1;
        if (source.readyState === EventSource.CLOSED || errors >= this.sseMaxErrors) fallback();
        else setMode("reconnecting");
      });
    };
    sse();
    return watch;
  }
}
