-- request.lua: the request every wrk connection repeats, and a JSON summary at the end.
-- Environment: WRK_METHOD (default GET), WRK_BODY (sent as application/json),
-- WRK_IF_NONE_MATCH (an ETag for If-None-Match), WRK_AUTHORIZATION (an Authorization
-- header, e.g. "Bearer <jwt>"). The request is built once (wrk's
-- default init/request), so the script costs nothing per request.
-- Prints: one line "WRK_JSON {...}" with requests, duration, errors and latency (us).

wrk.method = os.getenv("WRK_METHOD") or "GET"
local body = os.getenv("WRK_BODY")
if body then
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
end
local etag = os.getenv("WRK_IF_NONE_MATCH")
if etag then
  wrk.headers["If-None-Match"] = etag
end
local authorization = os.getenv("WRK_AUTHORIZATION")
if authorization then
  wrk.headers["Authorization"] = authorization
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"mean": %.1f, "p50": %d, "p90": %d, "p99": %d, "max": %d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
