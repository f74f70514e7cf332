// What every part of the browser client shares: the job's end states, its errors, and the
// small helpers for waiting and cancelling. Internal: import from jobstream.js instead.

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

export class JobstreamTimeoutError extends Error {
  // follow() gave up: the job did not end within `timeoutMs`. The job itself keeps running;
  // `job` is the last state seen (null if none came).
  constructor(jobId, timeoutMs, job) {
    super(`job ${jobId} did not end within ${timeoutMs} ms (it may still be running)`);
    this.name = "JobstreamTimeoutError";
    this.jobId = jobId;
    this.timeoutMs = timeoutMs;
    this.job = job;
  }
}

// Errors worth retrying after a pause: the network, or a server that is busy or restarting.
export function isTransient(err) {
  return !(err instanceof JobstreamError) || [429, 502, 503, 504].includes(err.status);
}

export function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal && signal.aborted) return reject(signal.reason);
    const onAbort = () => { clearTimeout(timer); reject(signal.reason); };
    const timer = setTimeout(() => {
      if (signal) signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    if (signal) signal.addEventListener("abort", onAbort, { once: true });
  });
}

export function retryAfterMs(response, fallbackMs) {
  const value = Number(response.headers.get("Retry-After"));
  return Number.isFinite(value) && value >= 0 ? value * 1000 : fallbackMs;
}

// An AbortController that is also aborted (with the same reason) when `parent` is.
export function childController(parent) {
  const controller = new AbortController();
  if (!parent) return controller;
  if (parent.aborted) {
    controller.abort(parent.reason);
    return controller;
  }
  const onAbort = () => controller.abort(parent.reason);
  parent.addEventListener("abort", onAbort, { once: true });
  controller.signal.addEventListener("abort", () => parent.removeEventListener("abort", onAbort), { once: true });
  return controller;
}
