-- retry_job: the attempt failed and the task allows another: PROCESSING -> PENDING with
-- the failed attempt's error kept; a new message (next dispatch) waits in the delayed
-- set until its backoff is over; the current entry is acknowledged and deleted.
-- Idempotent: a re-sent retry finds the job at (or past) its new dispatch, from this
-- attempt or a later one, and answers OK without queueing the message a second time.
-- KEYS: 1 job hash, 2 queue stream, 3 queue delayed zset
-- ARGV: 1 the partition's events channel, 2 attempt, 3 error JSON, 4 backoff ms (run_at is Redis
--       TIME + this), 5 new message,
--       6 new dispatch, 7 active TTL s, 8 group, 9 entry id
-- Returns: {OK} | {NOT_FOUND} | {BAD_TRANSITION, status} | {STALE}
-- Publishes: the PENDING job with its error and run_at (not again for a re-sent retry).
local job, stream, delayed = KEYS[1], KEYS[2], KEYS[3]
local cur = redis.call('HMGET', job, 'status', 'attempts', 'dispatch')
if not cur[1] then
  return {NOT_FOUND}
end
if tonumber(cur[2]) >= tonumber(ARGV[2]) and tonumber(cur[3] or '0') >= tonumber(ARGV[6]) then
  js_ack(stream, ARGV[8], ARGV[9])
  return {OK}
end
if cur[1] ~= 'PROCESSING' then
  return {BAD_TRANSITION, cur[1]}
end
if cur[2] ~= ARGV[2] then
  return {STALE}
end
local now = js_now()
local run_at = now + math.max(0, math.floor(tonumber(ARGV[4])))
js_commit(job, {
  status = 'PENDING', error = ARGV[3], run_at = tostring(run_at), dispatch = ARGV[6],
  progress = '0', message = false, eta = false, worker = false,
}, tonumber(ARGV[7]), now, ARGV[1])
redis.call('ZADD', delayed, run_at, ARGV[5])
js_ack(stream, ARGV[8], ARGV[9])
return {OK}
