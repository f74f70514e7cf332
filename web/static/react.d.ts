// Types of the optional React hook (react.js). Only the hook's own shapes: no React types needed.

import type { Job, Jobstream, FollowMode } from "./jobstream.js";

export interface UseJobOptions {
  /** The client to follow with (default: the one given to setDefaultClient, else same origin, no token). */
  client?: Jobstream;
  /** Keep the job in localStorage until it ends (see Jobstream.resumeAll). */
  persist?: boolean;
  /** Give up after this long; `error` is then a JobstreamTimeoutError. */
  timeoutMs?: number;
}

export interface JobState<Result = unknown> {
  /** The newest state; null before the first arrives. */
  job: Job<Result> | null;
  /** The transport in use; null before one is chosen. */
  transport: FollowMode | null;
  /** What stopped following: a JobstreamError, a JobstreamTimeoutError. */
  error: Error | null;
  /** Following has ended: the job ended, or `error` says why it stopped. */
  done: boolean;
}

/** Follow a job (an id, or a job such as createJob's answer) while the component is mounted. */
export function useJob<Result = unknown>(
  job: string | Job<Result> | null | undefined,
  options?: UseJobOptions,
): JobState<Result>;

/** The client useJob uses when none is passed. */
export function setDefaultClient(client: Jobstream): void;
