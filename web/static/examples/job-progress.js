// An example component built on useJob: a progress bar, the current step, then the outcome.
// Plain createElement calls, so it runs without a build step; in JSX it reads:
//
//   export function JobProgress({ jobId, client }) {
//     const { job, error, done } = useJob(jobId, { client, persist: true });
//     if (error) return <p role="alert">Could not follow the job: {error.message}</p>;
//     if (!job) return <p>Starting…</p>;
//     return (
//       <div>
//         <progress max={100} value={job.progress} aria-label="Progress" />
//         <p>{done ? `Finished: ${job.status}` : job.message ?? job.status}</p>
//         <p>This job keeps running if you close the page.</p>
//       </div>
//     );
//   }

import { createElement as h } from "react";
import { useJob } from "../react.js";

export function JobProgress({ jobId, client }) {
  const { job, error, done } = useJob(jobId, { client, persist: true });
  if (error) return h("p", { role: "alert" }, `Could not follow the job: ${error.message}`);
  if (!job) return h("p", null, "Starting…");
  return h(
    "div",
    null,
    h("progress", { max: 100, value: job.progress, "aria-label": "Progress" }),
    h("p", { className: "step" }, done ? `Finished: ${job.status}` : job.message ?? job.status),
    done ? null : h("p", null, "This job keeps running if you close the page."),
  );
}
