// Types of the jobstream browser client (jobstream.js) and of what the API answers.
// Written by hand; tests/browser/test_client_types.py holds the wire shapes to the app's
// OpenAPI document (/schema/openapi.json) and type-checks a usage file with tsc.

/** Where a job is in its life. SUCCESS, FAILURE and CANCELLED never change again. */
export type JobStatus = "PENDING" | "PROCESSING" | "SUCCESS" | "FAILURE" | "CANCELLED";

/** Why a job failed or was cancelled (or why its last attempt failed, while a retry waits). */
export interface JobError {
  type: string;
  message: string;
  /** The task's own details; `traceback` where the server shows it. */
  details?: unknown;
}

/** Where the completion webhook of a job with a `callback_url` stands. */
export interface WebhookState {
  url: string;
  /** "waiting" (the job is active), "pending", "delivered" or "failed". */
  state: string;
  attempts: number;
  last_error: string | null;
  next_attempt_at: string | null;
  delivered_at: string | null;
}

/**
 * A job, the same in every HTTP body and SSE event. Times are ISO-8601 strings (UTC).
 * `Result` is what the task returns (null until SUCCESS); `Input` what it was given.
 */
export interface Job<Result = unknown, Input = unknown> {
  id: string;
  /** The task's name, e.g. "demo.sleep". */
  type: string;
  status: JobStatus;
  /** 0 to 100. */
  progress: number;
  /** The current step, set by the task ("Generating scene 3 of 7"). */
  message: string | null;
  /** Estimated seconds left; null when unknown. */
  eta_seconds: number | null;
  input: Input;
  result: Result | null;
  error: JobError | null;
  owner: string;
  queue: string;
  /** How many times a worker started it. */
  attempts: number;
  created_at: string;
  updated_at: string;
  started_at: string | null;
  completed_at: string | null;
  expires_at: string | null;
  /** When a delayed job may start. */
  run_at: string | null;
  /** +1 on every change: the ETag and the SSE event id. */
  version: number;
  cancel_requested: boolean;
  /** The worker running it, or that ran its last attempt: shown to admins only (null otherwise). */
  worker: string | null;
  labels: Record<string, string>;
  /** The service that created it for its owner (null: the owner did). */
  created_by: string | null;
  timeout_seconds: number | null;
  keep_until_fetched: boolean;
  webhook: WebhookState | null;
}

/** What `POST /jobs` answers: the job, and a token that opens its event stream (null in no-auth mode). */
export interface CreatedJob<Result = unknown, Input = unknown> extends Job<Result, Input> {
  stream_token: string | null;
}

/** One page of `GET /jobs`, newest first; pass `next_cursor` back as `cursor`. */
export interface JobPage {
  jobs: Job[];
  next_cursor: string | null;
}

/** `GET /jobs/{id}/result`: the result once SUCCESS, null while the job is active. */
export interface JobResult<Result = unknown> {
  id: string;
  status: JobStatus;
  result: Result | null;
}

/** A registered task type, as `GET /tasks` lists it. */
export interface TaskInfo {
  name: string;
  queue: string;
  timeout_seconds: number | null;
  retries: number;
  retention_seconds: number;
  /** JSON Schema of the task's input. */
  input_schema: Record<string, unknown>;
  output_schema: Record<string, unknown>;
  description: string | null;
}

export interface TaskList {
  tasks: TaskInfo[];
}

/** A short-lived token that opens one job's stream, or the caller's feed. */
export interface StreamGrant {
  token: string;
  expires_at: string;
  url: string;
}

export interface FieldProblem {
  message: string;
  /** Where: a JSON path into the body, or a parameter's name. */
  field?: string | null;
  source?: string | null;
}

/** An error answer (application/problem+json, RFC 9457); members without a value are left out. */
export interface Problem {
  /** A URI naming the kind of problem ("about:blank" when left out). */
  type?: string;
  title: string;
  status: number;
  detail?: string | null;
  instance?: string | null;
  /** On a 422: each invalid field. */
  errors?: FieldProblem[] | null;
  /** On a 409 from `GET /jobs/{id}/result`: how the job ended, and why. */
  job_status?: JobStatus | null;
  error?: JobError | null;
}

/** The API answered with an error status; `problem` is its body (null if it was not JSON). */
export class JobstreamError extends Error {
  constructor(status: number, problem: Problem | null);
  readonly name: "JobstreamError";
  readonly status: number;
  readonly problem: Problem | null;
}

/** `follow` gave up after `timeoutMs`; the job itself keeps running. */
export class JobstreamTimeoutError extends Error {
  constructor(jobId: string, timeoutMs: number, job: Job | null);
  readonly name: "JobstreamTimeoutError";
  readonly jobId: string;
  readonly timeoutMs: number;
  /** The last state seen before giving up (null if none came). */
  readonly job: Job | null;
}

/** Whether the job has ended (SUCCESS, FAILURE or CANCELLED). */
export function isTerminal(job: Pick<Job, "status">): boolean;

/** "auto": SSE, polling while SSE cannot be had; "sse" (still polls if SSE fails) or "poll" only. */
export type Transport = "auto" | "sse" | "poll";

/** How a state reached `onUpdate`: the job passed in, a transport, or the catch-up request. */
export type Delivery = "initial" | "sse" | "poll" | "catch-up";

/** The transport `follow` uses now. */
export type FollowMode = "sse" | "poll";

/** The state of `watchAll`'s feed. */
export type WatchMode = "sse" | "poll" | "reconnecting" | "unauthorized";

/** Where `persist` keeps jobs: localStorage, or anything with the same three methods. */
export interface JobStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

export interface JobstreamOptions {
  /** Where the API lives: "" (this origin's root, the default) or a mount such as "/api". */
  baseUrl?: string;
  /** A bearer JWT; null where the server needs none (or a session cookie authenticates). */
  token?: string | null;
  transport?: Transport;
  /** SSE that has not opened by then counts as failed (5000). */
  sseOpenTimeoutMs?: number;
  /** Errors in a row before SSE counts as failed (3). */
  sseMaxErrors?: number;
  /** After a fallback, SSE is tried again after this long (2000), doubling up to `sseRetryMaxMs` (60000). */
  sseRetryMs?: number;
  sseRetryMaxMs?: number;
  /** How long one long poll may wait on the server (25). */
  pollWaitSeconds?: number;
  /** The pause between polls after an error, or when the server cannot wait (1000). */
  pollIntervalMs?: number;
  /** Where `persist` keeps jobs: localStorage by default; null keeps nothing. */
  storage?: JobStorage | null;
  /** The storage key (default "jobstream.jobs:" and the base URL). */
  storageKey?: string;
}

export interface RequestOptions {
  signal?: AbortSignal;
}

/** Per-job options of `POST /jobs` (see the README's "Per-job options"). */
export interface CreateJobOptions extends RequestOptions {
  /** Start no earlier than this many seconds from now. */
  delaySeconds?: number;
  /** Start no earlier than this (a past time means now). */
  runAt?: Date | string;
  /** Seconds this job may run, at most its task's timeout. */
  timeout?: number;
  labels?: Record<string, string>;
  /** A completion webhook (hosts the server allows only). */
  callbackUrl?: string;
  /** Create the job for this owner (callers with the service role only). */
  owner?: string;
  /** The same key (same owner) returns the first job instead of creating another. */
  idempotencyKey?: string;
}

export interface ListJobsOptions extends RequestOptions {
  status?: JobStatus;
  type?: string;
  /** Only jobs carrying every one of these labels. */
  labels?: Record<string, string>;
  /** Another owner's jobs (admins and services only). */
  owner?: string;
  /** 1 to 100 (20). */
  limit?: number;
  cursor?: string;
}

export interface FollowOptions<Result = unknown> {
  /** Every newer state, and how it came. */
  onUpdate?: (job: Job<Result>, delivery: Delivery) => void;
  /** The transport, each time it changes. */
  onMode?: (mode: FollowMode) => void;
  /** Stop following (the promise rejects with the signal's reason). */
  signal?: AbortSignal;
  /** Give up after this long: reject with a JobstreamTimeoutError and stop every request. */
  timeoutMs?: number;
  /** Keep the job in localStorage until it ends, so `resumeAll` can follow it after a reload. */
  persist?: boolean;
}

export type ResumeOptions<Result = unknown> = Omit<FollowOptions<Result>, "persist">;

/** A job saved by `follow({ persist: true })` that has not ended yet. */
export interface SavedJob {
  id: string;
  type: string | null;
  /** When it was saved (ISO-8601). */
  savedAt: string;
}

export interface WatchOptions {
  /** A snapshot of jobs, oldest first (on connect, on every poll, on catch-up). */
  onJobs?: (jobs: Job[], delivery: Delivery) => void;
  /** One changed job. */
  onUpdate?: (job: Job, delivery: Delivery) => void;
  onMode?: (mode: WatchMode) => void;
  /** How many of the newest jobs a poll lists (50). */
  limit?: number;
}

export interface Watch {
  /** The feed's state now; null before the first transport is chosen. */
  readonly mode: WatchMode | null;
  /** Stop watching: every request, stream and timer ends. */
  close(): void;
}

export class Jobstream {
  constructor(options?: JobstreamOptions);
  readonly baseUrl: string;
  token: string | null;
  readonly transport: Transport;

  /** `POST /jobs`: the job as created (202), or the one an idempotency key created before (200). */
  createJob<Result = unknown, Input = unknown>(
    type: string,
    input?: Input,
    options?: CreateJobOptions,
  ): Promise<CreatedJob<Result, Input>>;
  /** `GET /jobs/{id}`. */
  getJob<Result = unknown>(id: string, options?: RequestOptions): Promise<Job<Result>>;
  /** `GET /jobs`: the caller's jobs, newest first. */
  listJobs(options?: ListJobsOptions): Promise<JobPage>;
  /** `GET /jobs/{id}/result`; rejects with a 409 JobstreamError if the job ended without one. */
  getResult<Result = unknown>(id: string, options?: RequestOptions): Promise<JobResult<Result>>;
  /** `POST /jobs/{id}/cancel`: CANCELLED, or PROCESSING with `cancel_requested`. */
  cancelJob<Result = unknown>(id: string, options?: RequestOptions): Promise<Job<Result>>;
  /** `GET /tasks`. */
  listTasks(options?: RequestOptions): Promise<TaskList>;

  /** Follow a job (an id, or a job such as createJob's answer) until it ends; resolves with its final state. */
  follow<Result = unknown>(job: string | Job<Result>, options?: FollowOptions<Result>): Promise<Job<Result>>;
  /** Follow every job saved with `persist` until each ends; jobs the server no longer knows are left out. */
  resumeAll<Result = unknown>(options?: ResumeOptions<Result>): Promise<Job<Result>[]>;
  /** The saved jobs that have not ended yet. */
  persisted(): SavedJob[];
  /** Stop keeping a saved job (it is not cancelled). */
  forget(id: string): void;
  /** Watch all of the caller's jobs (the dashboard). */
  watchAll(options?: WatchOptions): Watch;
}
