// A frontend's use of the client, type-checked by tsc against jobstream.d.ts and react.d.ts
// as an installed package (tests/browser/test_client_types.py). The @ts-expect-error lines are
// misuses the types must refuse: tsc fails if one of them compiles.

import {
  Jobstream,
  JobstreamError,
  JobstreamTimeoutError,
  isTerminal,
  type CreatedJob,
  type Job,
  type JobPage,
  type JobStatus,
  type Watch,
} from "@jobstream/client";
import { setDefaultClient, useJob, type JobState } from "@jobstream/client/react";

interface Report {
  url: string;
  pages: number;
}

const js = new Jobstream({ baseUrl: "/api", token: null, transport: "auto", sseRetryMs: 1000 });
setDefaultClient(js);

export async function buildReport(customer: string): Promise<Report | null> {
  const created: CreatedJob<Report, { customer: string }> = await js.createJob<Report, { customer: string }>(
    "reports.build",
    { customer },
    { delaySeconds: 5, labels: { case: "42" }, idempotencyKey: `report-${customer}` },
  );
  const token: string | null = created.stream_token;
  void token;
  try {
    const done = await js.follow<Report>(created, {
      persist: true,
      timeoutMs: 5 * 60_000,
      onUpdate: (job, delivery) => console.log(delivery, job.progress, job.message ?? "", job.eta_seconds),
      onMode: (mode) => console.log(mode === "sse" ? "live" : "polling"),
    });
    if (done.status === "SUCCESS" && done.result) return done.result;
    console.log(done.error?.type, done.error?.message);
  } catch (err) {
    if (err instanceof JobstreamTimeoutError) console.log(err.jobId, err.timeoutMs, err.job?.status);
    else if (err instanceof JobstreamError) console.log(err.status, err.problem?.detail, err.problem?.job_status);
    else throw err;
  }
  return null;
}

export async function afterReload(): Promise<number> {
  const saved = js.persisted().map((entry) => `${entry.id} ${entry.type ?? "?"} ${entry.savedAt}`);
  console.log(saved);
  const ended: Job[] = await js.resumeAll({ onUpdate: (job) => console.log(job.id, job.status) });
  js.forget("some-id");
  return ended.filter((job) => job.status === "SUCCESS").length;
}

export async function everyPage(): Promise<Job[]> {
  const all: Job[] = [];
  let page: JobPage = await js.listJobs({ status: "PROCESSING", labels: { case: "42" }, limit: 100 });
  all.push(...page.jobs);
  while (page.next_cursor) {
    page = await js.listJobs({ cursor: page.next_cursor });
    all.push(...page.jobs);
  }
  const result = await js.getResult<Report>(all[0].id);
  console.log(result.result?.pages, (await js.listTasks()).tasks.map((task) => task.input_schema));
  return all.filter((job) => !isTerminal(job));
}

export function dashboard(render: (jobs: Job[]) => void): Watch {
  const watch = js.watchAll({ onJobs: render, onUpdate: (job) => render([job]), onMode: (mode) => console.log(mode) });
  if (watch.mode === "unauthorized") watch.close();
  return watch;
}

export function progressOf(id: string | null): string {
  const state: JobState<Report> = useJob<Report>(id, { persist: true, timeoutMs: 60_000 });
  if (state.error) return state.error.message;
  return state.done ? `${state.job?.result?.url}` : `${state.job?.progress ?? 0}% (${state.transport ?? "connecting"})`;
}

// Misuses the types must refuse.
// @ts-expect-error: not a status
export const badStatus: JobStatus = "DONE";
// @ts-expect-error: timeoutMs is a number of milliseconds
void js.follow("id", { timeoutMs: "5 minutes" });
// @ts-expect-error: a job's progress is a number
export const badProgress: string = ({} as Job).progress;
// @ts-expect-error: labels are strings
void js.createJob("demo.sleep", {}, { labels: { attempt: 1 } });
// @ts-expect-error: useJob takes an id or a job
useJob(42);
