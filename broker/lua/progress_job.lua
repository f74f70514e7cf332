-- progress_job: the running attempt reports progress, its current step and an ETA.
-- KEYS: 1 job hash
-- ARGV: 1 the partition's events channel, 2 attempt, 3 progress (0-100), 4 active TTL s,
--       5 opts (MessagePack map): message (the current step; absent keeps it),
--       eta (seconds; absent clears it)
-- Returns: {OK, cancel_requested 0|1} | {NOT_FOUND} | {BAD_TRANSITION, status} | {STALE}
-- Publishes: the job with its new progress.
local job = KEYS[1]
local cur = redis.call('HMGET', job, 'status', 'attempts', 'cancel_requested')
if not cur[1] then
  return {NOT_FOUND}
end
if cur[1] ~= 'PROCESSING' then
  return {BAD_TRANSITION, cur[1]}
end
if cur[2] ~= ARGV[2] then
  return {STALE}
end
local opts = js_opts(ARGV[5])
local changes = {progress = ARGV[3], eta = opts.eta and tostring(opts.eta) or false}
if opts.message then
  changes.message = opts.message
end
js_commit(job, changes, tonumber(ARGV[4]), js_now(), ARGV[1])
return {OK, cur[3] and 1 or 0}
