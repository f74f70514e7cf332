// The live side of the browser client: one server-sent events stream, the moments a page
// should catch up (it came back into view, or back online), and the pace of SSE retries
// after a fallback to polling. Internal: import from jobstream.js instead.

// Opens an EventSource on `url` and reports what a follower needs to know: it opened (again),
// a job arrived, it is reconnecting, or it failed for good (it did not open within
// `openTimeoutMs`, the server refused it, or `maxErrors` errors came in a row). After a
// failure, or close(), nothing more is reported.
export function openEventStream(url, { openTimeoutMs, maxErrors, onOpen, onJob, onReconnecting = () => {}, onFailure }) {
  const source = new EventSource(url);
  let errors = 0;
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    clearTimeout(openTimer);
    source.close();
  };
  const fail = () => {
    if (closed) return;
    close();
    onFailure();
  };
  const openTimer = setTimeout(fail, openTimeoutMs);
  source.addEventListener("open", () => {
    errors = 0;
    clearTimeout(openTimer);
    if (!closed) onOpen();
  });
  source.addEventListener("job", (event) => {
    let job;
    try { job = JSON.parse(event.data); } catch { return; }
    if (!closed) onJob(job);
  });
  source.addEventListener("error", () => {
    // CLOSED: the server refused the stream (401, 404, 503) or answered 204 (the job ended);
    // the browser will not retry, so the caller's fallback takes over.
    errors += 1;
    if (source.readyState === EventSource.CLOSED || errors >= maxErrors) fail();
    else if (!closed) onReconnecting();
  });
  return {
    close,
    get live() { return !closed && source.readyState === EventSource.OPEN; },
  };
}

// Gives a watcher (FeedWatch, JobFollow) a new stream on `url` in place of its old one: once
// it opens, the watcher's polling stops and its mode is "sse"; when it fails, the watcher
// falls back through its sseFailed(). The watcher has client, backoff, stream, setMode,
// stopPolling and sseFailed.
export function replaceStream(watcher, url, { onJob, onReconnecting }) {
  if (watcher.stream) watcher.stream.close();
  watcher.stream = openEventStream(url, {
    openTimeoutMs: watcher.client.sseOpenTimeoutMs,
    maxErrors: watcher.client.sseMaxErrors,
    onOpen: () => {
      watcher.backoff.reset();
      watcher.stopPolling();
      watcher.setMode("sse");
    },
    onJob,
    onReconnecting,
    onFailure: () => {
      watcher.stream = null;
      watcher.sseFailed();
    },
  });
}

// Calls `callback` when the page comes back into view or the browser comes back online:
// the moments when a transport may have died unnoticed (a phone froze the tab, the network
// changed). Returns the function that stops listening.
export function onWake(callback) {
  if (typeof window === "undefined" || typeof document === "undefined") return () => {};
  const onVisibility = () => { if (document.visibilityState === "visible") callback("visible"); };
  const onOnline = () => callback("online");
  document.addEventListener("visibilitychange", onVisibility);
  window.addEventListener("online", onOnline);
  return () => {
    document.removeEventListener("visibilitychange", onVisibility);
    window.removeEventListener("online", onOnline);
  };
}

// When to try SSE again after falling back to polling: first after `firstMs`, then twice as
// long each time up to `maxMs`, each delay spread by +-20% so that many pages coming back
// from one outage do not all knock at once.
export class Backoff {
  constructor(firstMs, maxMs) {
    this.firstMs = firstMs;
    this.maxMs = maxMs;
    this.nextMs = firstMs;
  }

  delay() {
    const delay = this.nextMs;
    this.nextMs = Math.min(this.nextMs * 2, this.maxMs);
    return delay * (0.8 + Math.random() * 0.4);
  }

  reset() {
    this.nextMs = this.firstMs;
  }
}
