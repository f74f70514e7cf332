-- reap_job: the reaper's verdict on an active job it found with no message anywhere (no
-- entry in its queue stream, none in the delayed set). The reaper read the job before it
-- looked at the queue, so the verdict holds only while the job is unchanged since: the
-- script is fenced on the version the reaper saw, and a worker that acted meanwhile wins.
--   PROCESSING, unchanged for at least `min idle` ms: -> FAILURE with the Lost error.
--   PENDING: resent as the next dispatch (to the stream, or to the delayed set while its
--   run_at is ahead), or -> FAILURE, as the pending action says.
-- A job it fails with a callback_url becomes due for its webhook (js_finish).
-- KEYS: 1 job hash, 2 owner active set, 3 queue stream, 4 queue delayed zset, 5 webhook hash,
--       6 webhooks due zset
-- ARGV: 1 the partition's events channel, 2 job id, 3 version seen, 4 min idle ms (since updated_at),
--       5 active TTL s, 6 retention s (0: deleted once published), 7 error JSON, 8 pending action ('resend' | 'fail'),
--       9 message of the next dispatch, 10 next dispatch, 11 opts (MessagePack map): webhook_window (s)
-- Returns: {OK, new status} | {NOT_FOUND} | {STALE} (changed since it was seen)
--        | {SKIPPED, status} (terminal, or PROCESSING and changed too recently)
-- Publishes: the FAILURE job, or the PENDING job with its new dispatch.
local job, active, stream, delayed = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local cur = redis.call('HMGET', job, 'status', 'version', 'updated_at', 'run_at', 'created_at')
if not cur[1] then
  return {NOT_FOUND}
end
if cur[2] ~= ARGV[3] then
  return {STALE}
end
local now = js_now()
local active_ttl = tonumber(ARGV[5])

local function fail()
  local hook = {key = KEYS[5], due = KEYS[6], id = ARGV[2], window = js_opts(ARGV[11]).webhook_window}
  js_finish(job, {status = 'FAILURE', completed_at = tostring(now), error = ARGV[7], eta = false,
    run_at = false}, tonumber(ARGV[6]), now, ARGV[1], hook)
  redis.call('SREM', active, ARGV[2])
  return {OK, 'FAILURE'}
end

if cur[1] == 'PROCESSING' then
  -- Every change stamps updated_at (js_commit); a record older than that stamp has created_at.
  local changed_at = tonumber(cur[3] or cur[5] or '0')
  if now - changed_at < tonumber(ARGV[4]) then
    return {SKIPPED, cur[1]}
  end
  return fail()
end
if cur[1] ~= 'PENDING' then
  return {SKIPPED, cur[1]}
end
if ARGV[8] == 'fail' then
  return fail()
end
js_commit(job, {dispatch = ARGV[10]}, active_ttl, now, ARGV[1])
local run_at = tonumber(cur[4] or '0')
if run_at > now then
  redis.call('ZADD', delayed, run_at, ARGV[9])
else
  redis.call('XADD', stream, '*', 'data', ARGV[9])
end
return {OK, 'PENDING'}
