-- cancel_job: a user asks to cancel. PENDING -> CANCELLED at once, and its message leaves
-- the delayed set if it waits there (a worker that receives a message already on the
-- stream skips it); PROCESSING -> cancel_requested, and the job id goes out on the
-- partition's cancels shard channel so the worker running it stops it.
-- A PENDING job with a callback_url becomes due for its webhook (js_finish); a PROCESSING one
-- does once its worker ends it (finish_job).
-- KEYS: 1 job hash, 2 owner active set, 3 queue delayed zset, 4 webhook hash, 5 webhooks due zset
-- ARGV: 1 the partition's events channel, 2 retention s (0: deleted once published), 3 the partition's cancels channel,
--       4 job id, 5 error JSON, 6 the job's current message (as queued),
--       7 opts (MessagePack map): owner (the caller; absent for an admin: any owner),
--       webhook_window (s)
-- Returns: {OK, flat record} | {NOT_FOUND} (missing or another owner's) | {BAD_TRANSITION, status}
-- Publishes: the CANCELLED job, or the PROCESSING job with cancel_requested.
local job, active = KEYS[1], KEYS[2]
local opts = js_opts(ARGV[7])
local cur = redis.call('HMGET', job, 'status', 'owner', 'cancel_requested')
if not cur[1] or (opts.owner and cur[2] ~= opts.owner) then
  return {NOT_FOUND}
end
local now = js_now()
if cur[1] == 'PENDING' then
  local hook = {key = KEYS[4], due = KEYS[5], id = ARGV[4], window = opts.webhook_window}
  local flat = js_finish(job, {status = 'CANCELLED', completed_at = tostring(now), error = ARGV[5],
    run_at = false}, tonumber(ARGV[2]), now, ARGV[1], hook)
  redis.call('SREM', active, ARGV[4])
  redis.call('ZREM', KEYS[3], ARGV[6])
  return {OK, flat}
end
if cur[1] == 'PROCESSING' then
  local flat
  if cur[3] then
    flat = redis.call('HGETALL', job)
  else
    flat = js_commit(job, {cancel_requested = '1'}, redis.call('TTL', job), now, ARGV[1])
  end
  redis.call('SPUBLISH', ARGV[3], ARGV[4])
  return {OK, flat}
end
return {BAD_TRANSITION, cur[1]}
