// useJob: a React hook (React 18 or later) that follows one job with the jobstream client.
// Optional: only this module imports "react"; jobstream.js itself needs nothing.
//
//   import { useJob } from "@jobstream/client/react";
//   const { job, error, done } = useJob(jobId, { persist: true });
//
// The hook follows the job while the component is mounted (and the id stays the same), and
// stops every request when it unmounts. See examples/job-progress.js.

import { useEffect, useState } from "react";
import { Jobstream } from "./jobstream.js";

const IDLE = Object.freeze({ job: null, transport: null, error: null, done: false });
let defaultClient = null;

// The client useJob uses when none is passed: same origin, no token (a session cookie or the
// no-auth mode), unless set here.
export function setDefaultClient(client) {
  defaultClient = client;
}

function clientOrDefault(client) {
  if (client) return client;
  if (!defaultClient) defaultClient = new Jobstream();
  return defaultClient;
}

// `job`: a job id, or a job (createJob's answer, whose stream token is then used); null or
// undefined follows nothing. Returns { job, transport, error, done }: the newest state (null
// before the first), "sse" or "poll", the error that stopped following (a JobstreamError, a
// JobstreamTimeoutError), and whether following has ended.
export function useJob(job, { client, persist = false, timeoutMs } = {}) {
  const js = clientOrDefault(client);
  const id = typeof job === "string" ? job : job ? job.id : null;
  const [state, setState] = useState(IDLE);
  useEffect(() => {
    setState(IDLE);
    if (!id) return undefined;
    const controller = new AbortController();
    const update = (change) => {
      if (!controller.signal.aborted) setState((current) => ({ ...current, ...change }));
    };
    js.follow(job, {
      persist,
      timeoutMs,
      signal: controller.signal,
      onUpdate: (latest) => update({ job: latest }),
      onMode: (transport) => update({ transport }),
    }).then(
      (latest) => update({ job: latest, done: true }),
      (error) => update({ error, done: true }),
    );
    return () => controller.abort();
  }, [id, js, persist, timeoutMs]); // eslint-disable-line react-hooks/exhaustive-deps -- `job` is read for its id (and first state) only
  return state;
}
