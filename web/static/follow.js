// Following one job to its end (Jobstream.follow). Internal: import from jobstream.js instead.
//
// The live transport is the job's SSE stream; when SSE cannot be had, long polling
// (GET /jobs/{id}?wait= with If-None-Match, honouring Retry-After) takes over, and SSE is
// tried again now and then (Backoff) until it works, when polling stops. When the page comes
// back into view or online, one GET catches up at once and a transport that is not plainly
// alive is renewed. A state is passed on only when its `version` is newer, so no transport
// can make a job go backwards.

import { JobstreamError, JobstreamTimeoutError, childController, isTerminal, isTransient, retryAfterMs, sleep } from "./basics.js";
import { Backoff, onWake, replaceStream } from "./live.js";

export class JobFollow {
  constructor(client, job, { onUpdate = () => {}, onMode = () => {}, signal, timeoutMs, persist = false } = {}) {
    this.client = client;
    this.id = typeof job === "string" ? job : job.id;
    this.latest = typeof job === "string" ? null : job;
    this.streamToken = this.latest ? this.latest.stream_token : null; // the create answer's, used once
    this.onUpdate = onUpdate;
    this.onMode = onMode;
    this.timeoutMs = timeoutMs;
    this.persist = persist;
    this.controller = childController(signal); // aborted when the follow ends, however it ends
    this.path = `/jobs/${encodeURIComponent(this.id)}`;
    this.backoff = new Backoff(client.sseRetryMs, client.sseRetryMaxMs);
    this.mode = null;
    this.stream = null; // the SSE stream, while one is open or reconnecting
    this.polling = null; // the poll loop's controller, while it runs
    this.probeTimer = null;
    this.catchingUp = false;
    this.settled = false;
  }

  // Resolves with the terminal job; rejects on abort, timeout, or a job that cannot be read.
  run() {
    return new Promise((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
      if (this.known && this.latest.version !== undefined) this.onUpdate(this.latest, "initial");
      if (this.known && isTerminal(this.latest)) return this.finish(this.latest);
      if (this.persist) this.client.savedJobs.add(this.latest || { id: this.id });
      const signal = this.controller.signal;
      if (signal.aborted) return this.fail(signal.reason);
      signal.addEventListener("abort", () => this.fail(signal.reason), { once: true });
      if (this.timeoutMs != null) {
        const timedOut = () => this.fail(new JobstreamTimeoutError(this.id, this.timeoutMs, this.known ? this.latest : null));
        this.timeout = setTimeout(timedOut, this.timeoutMs);
      }
      this.stopWaking = onWake(() => this.catchUp());
      if (this.sseAllowed) this.sse(); else this.poll();
    });
  }

  get known() {
    return Boolean(this.latest && this.latest.status);
  }

  get sseAllowed() {
    return this.client.transport !== "poll" && typeof EventSource !== "undefined";
  }

  offer(job, mode) {
    if (this.settled || (this.known && job.version <= this.latest.version)) return;
    this.latest = job;
    this.onUpdate(job, mode);
    if (isTerminal(job)) this.finish(job);
  }

  setMode(mode) {
    if (this.mode === mode) return;
    this.mode = mode;
    this.onMode(mode);
  }

  finish(job) {
    this.settle(true, () => this.resolve(job));
  }

  fail(err) {
    this.settle(err instanceof JobstreamError && err.status === 404, () => this.reject(err));
  }

  // Stops every request, timer and listener; a job that ended (or is gone) is no longer saved.
  settle(forget, deliver) {
    if (this.settled) return;
    this.settled = true;
    clearTimeout(this.timeout);
    clearTimeout(this.probeTimer);
    if (this.stopWaking) this.stopWaking();
    if (this.stream) this.stream.close();
    if (!this.controller.signal.aborted) this.controller.abort();
    if (forget) this.client.savedJobs.remove(this.id);
    deliver();
  }

  async sse() {
    const token = this.streamToken;
    this.streamToken = null; // short-lived: a later stream asks for a fresh one
    let url;
    try {
      url = await this.client.streamUrl(`${this.path}/events`, token, `${this.path}/stream-token`);
    } catch (err) {
      if (err instanceof JobstreamError && err.status === 404) this.fail(err);
      else this.sseFailed();
      return;
    }
    if (this.settled) return;
    replaceStream(this, url, { onJob: (job) => this.offer(job, "sse") });
  }

  // SSE failed (at first, or again after a probe): poll, and try SSE again later.
  sseFailed() {
    if (this.settled) return;
    this.poll();
    clearTimeout(this.probeTimer);
    this.probeTimer = setTimeout(() => this.sse(), this.backoff.delay());
  }

  poll() {
    if (this.polling || this.settled) return;
    this.setMode("poll");
    const polling = childController(this.controller.signal);
    this.polling = polling;
    this.pollLoop(polling.signal).catch((err) => {
      if (!polling.signal.aborted) this.fail(err);
    });
  }

  stopPolling() {
    if (!this.polling) return;
    this.polling.abort();
    this.polling = null;
  }

  etagHeaders() {
    return this.known ? { "If-None-Match": `"${this.latest.version}"` } : {};
  }

  async pollLoop(signal) {
    const { pollIntervalMs, pollWaitSeconds } = this.client;
    while (!this.settled) {
      const query = this.known ? `?wait=${pollWaitSeconds}` : "";
      const asked = Date.now();
      let response;
      try {
        response = await this.client.request("GET", this.path + query, { headers: this.etagHeaders(), signal });
      } catch (err) {
        if (signal.aborted || !isTransient(err)) throw err;
        await sleep(pollIntervalMs, signal); // a network error or a busy server
        continue;
      }
      if (response.status === 200) this.offer(await response.json(), "poll");
      // After news (200) or a long poll that waited, ask again at once; a 304 that came back
      // at once (the server cannot wait right now) waits Retry-After, so a client never spins.
      const waited = Date.now() - asked >= pollIntervalMs;
      await sleep(response.status === 200 || waited ? 0 : retryAfterMs(response, pollIntervalMs), signal);
    }
  }

  // The page came back into view or online: one request for the current state, then the
  // live transport, renewed unless its stream is plainly open.
  async catchUp() {
    if (this.settled || this.catchingUp) return;
    this.catchingUp = true;
    const signal = this.controller.signal;
    try {
      const response = await this.client.request("GET", this.path, { headers: this.etagHeaders(), signal });
      if (response.status === 200) this.offer(await response.json(), "catch-up");
    } catch (err) {
      if (!signal.aborted && !isTransient(err)) this.fail(err);
    } finally {
      this.catchingUp = false;
    }
    if (this.settled || (this.stream && this.stream.live)) return;
    if (this.stream) this.stream.close();
    this.stream = null;
    if (this.polling) {
      this.stopPolling(); // its long poll may hang on a connection that died meanwhile
      this.poll();
    }
    if (this.sseAllowed) {
      clearTimeout(this.probeTimer);
      this.backoff.reset();
      this.sse();
    }
  }
}
