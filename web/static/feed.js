// Watching all of the caller's jobs (Jobstream.watchAll, the dashboard). Internal: import from
// jobstream.js instead.
//
// GET /events sends the newest jobs, then every change. When SSE cannot be had, GET /jobs is
// polled every few seconds, and SSE is tried again now and then (Backoff) until it works,
// when polling stops. When the page comes back into view or online, one GET /jobs catches up
// at once and a transport that is not plainly alive is renewed.

import { JobstreamError, childController, sleep } from "./basics.js";
import { Backoff, onWake, replaceStream } from "./live.js";

export class FeedWatch {
  constructor(client, { onJobs = () => {}, onUpdate = () => {}, onMode = () => {}, limit = 50 } = {}) {
    this.client = client;
    this.onJobs = onJobs;
    this.onUpdate = onUpdate;
    this.onMode = onMode;
    this.limit = limit;
    this.mode = null; // "sse", "poll", "reconnecting" or "unauthorized"
    this.controller = new AbortController();
    this.backoff = new Backoff(client.sseRetryMs, client.sseRetryMaxMs);
    this.stream = null;
    this.polling = null;
    this.probeTimer = null;
    this.batch = [];
    this.flushTimer = null;
    this.catchingUp = false;
  }

  start() {
    const stopWaking = onWake(() => this.catchUp());
    this.controller.signal.addEventListener("abort", () => {
      stopWaking();
      clearTimeout(this.probeTimer);
      clearTimeout(this.flushTimer);
      if (this.stream) this.stream.close();
    }, { once: true });
    if (this.sseAllowed) this.sse(); else this.poll();
    return this;
  }

  close() {
    this.controller.abort();
  }

  get closed() {
    return this.controller.signal.aborted;
  }

  get sseAllowed() {
    return this.client.transport !== "poll" && typeof EventSource !== "undefined";
  }

  setMode(mode) {
    if (this.closed || this.mode === mode) return;
    this.mode = mode;
    this.onMode(mode);
  }

  unauthorized() {
    this.setMode("unauthorized");
    this.close(); // nothing works until the caller watches again with another token
  }

  async sse() {
    let url;
    try {
      url = await this.client.streamUrl("/events", null, "/events/stream-token");
    } catch (err) {
      if (err instanceof JobstreamError && err.status === 401) this.unauthorized();
      else this.sseFailed();
      return;
    }
    if (this.closed) return;
    replaceStream(this, url, {
      onJob: (job) => this.collect(job),
      onReconnecting: () => { if (!this.polling) this.setMode("reconnecting"); }, // a probe's retry
    });
  }

  // Events that arrive in one burst (the snapshot on connect) are handed over together.
  collect(job) {
    this.batch.push(job);
    if (this.flushTimer !== null) return;
    this.flushTimer = setTimeout(() => {
      const jobs = this.batch;
      this.batch = [];
      this.flushTimer = null;
      if (jobs.length === 1) this.onUpdate(jobs[0], "sse"); else this.onJobs(jobs, "sse");
    }, 0);
  }

  sseFailed() {
    if (this.closed) return;
    this.poll();
    clearTimeout(this.probeTimer);
    this.probeTimer = setTimeout(() => this.sse(), this.backoff.delay());
  }

  poll(firstAfterMs = 0) {
    if (this.polling || this.closed) return;
    this.setMode("poll");
    this.polling = childController(this.controller.signal);
    this.pollLoop(this.polling.signal, firstAfterMs);
  }

  stopPolling() {
    if (!this.polling) return;
    this.polling.abort();
    this.polling = null;
  }

  async pollLoop(signal, firstAfterMs) {
    const interval = this.client.pollIntervalMs;
    const paused = (ms) => sleep(ms, signal).then(() => true, () => false); // false: polling stopped
    let pause = firstAfterMs;
    while (await paused(pause)) {
      pause = (await this.list(signal, "poll")) ? interval * 2 : interval * 5;
    }
  }

  // One GET /jobs: the newest jobs, oldest first, to onJobs. False when it failed.
  async list(signal, mode) {
    let page;
    try {
      page = await this.client.listJobs({ limit: this.limit, signal });
    } catch (err) {
      if (!signal.aborted && err instanceof JobstreamError && err.status === 401) this.unauthorized();
      return false;
    }
    if (!signal.aborted) this.onJobs(page.jobs.slice().reverse(), mode);
    return true;
  }

  async catchUp() {
    if (this.closed || this.catchingUp) return;
    this.catchingUp = true;
    await this.list(this.controller.signal, "catch-up");
    this.catchingUp = false;
    if (this.closed || (this.stream && this.stream.live)) return;
    if (this.stream) this.stream.close();
    this.stream = null;
    if (this.polling) {
      this.stopPolling(); // its request may hang on a connection that died meanwhile
      this.poll(this.client.pollIntervalMs * 2);
    }
    if (this.sseAllowed) {
      clearTimeout(this.probeTimer);
      this.backoff.reset();
      this.sse();
    }
  }
}
