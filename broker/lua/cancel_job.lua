-- cancel_job: a user asks to cancel. PENDING -> CANCELLED at once, and its message leaves
-- the delayed set if it waits there (a worker that receives a message already on the
-- stream skips it); PROCESSING -> cancel_requested, and the job id goes out on the cancel
-- channel so the worker running it stops it.
-- KEYS: 1 job hash, 2 owner active set, 3 queue delayed zset
-- ARGV: 1 owner channel prefix, 2 caller ('' = admin, any owner), 3 retention s,
--       4 cancel channel, 5 job id, 6 error JSON, 7 the job's current message (as queued)
-- Returns: {OK, flat record} | {NOT_FOUND} (missing or another owner's) | {BAD_TRANSITION, status}
-- Publishes: the CANCELLED job, or the PROCESSING job with cancel_requested.
local job, active = KEYS[1], KEYS[2]
local cur = redis.call('HMGET', job, 'status', 'owner', 'cancel_requested')
if not cur[1] or (ARGV[2] ~= '' and cur[2] ~= ARGV[2]) then
  return {NOT_FOUND}
end
local now = js_now()
if cur[1] == 'PENDING' then
  local flat = js_commit(job, {status = 'CANCELLED', completed_at = tostring(now), error = ARGV[6],
    run_at = false}, tonumber(ARGV[3]), now, ARGV[1])
  redis.call('SREM', active, ARGV[5])
  redis.call('ZREM', KEYS[3], ARGV[7])
  return {OK, flat}
end
if cur[1] == 'PROCESSING' then
  local flat
  if cur[3] then
    flat = redis.call('HGETALL', job)
  else
    flat = js_commit(job, {cancel_requested = '1'}, redis.call('TTL', job), now, ARGV[1])
  end
  redis.call('PUBLISH', ARGV[4], ARGV[5])
  return {OK, flat}
end
return {BAD_TRANSITION, cur[1]}
