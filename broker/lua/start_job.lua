-- start_job: a worker takes the job it received: PENDING -> PROCESSING, attempts + 1.
-- A PROCESSING job is restarted only by the consumer that now holds its entry (the
-- previous holder's lease ran out); the previous attempt is fenced off by `attempts`.
-- Idempotent: each start carries a run token of its own; the same start re-sent (its
-- reply was lost to a dropped connection) finds its token and answers OK without
-- counting a second attempt.
-- KEYS: 1 job hash, 2 queue stream
-- ARGV: 1 the partition's events channel, 2 group, 3 consumer, 4 entry id, 5 message dispatch,
--       6 active TTL s, 7 run token (unique per start)
-- Returns: {OK, flat record, ms the job waited since it was due (its run_at, else its
--          created_at), absent for a re-sent start} | {STALE} (entry no longer ours: left alone)
--        | {NOT_FOUND} | {SKIPPED, status} (stale dispatch or terminal: entry acked)
-- Publishes: the PROCESSING job (not again for a re-sent start).
local job, stream = KEYS[1], KEYS[2]
local group, consumer, entry = ARGV[2], ARGV[3], ARGV[4]

if not js_owns(stream, group, entry, consumer) then
  return {STALE}
end
local cur = redis.call('HMGET', job, 'status', 'dispatch', 'attempts', 'run_token', 'run_at', 'created_at')
if not cur[1] then
  js_ack(stream, group, entry)
  return {NOT_FOUND}
end
if cur[1] == 'PROCESSING' and cur[4] == ARGV[7] then
  return {OK, redis.call('HGETALL', job)}
end
if cur[2] ~= ARGV[5] or TERMINAL[cur[1]] then
  js_ack(stream, group, entry)
  return {SKIPPED, cur[1]}
end

local now = js_now()
local flat = js_commit(job, {
  status = 'PROCESSING', attempts = tostring(tonumber(cur[3]) + 1), started_at = tostring(now),
  worker = consumer, progress = '0', message = false, eta = false, run_at = false,
  run_token = ARGV[7],
}, tonumber(ARGV[6]), now, ARGV[1])
return {OK, flat, math.max(0, now - (tonumber(cur[5]) or tonumber(cur[6]) or now))}
