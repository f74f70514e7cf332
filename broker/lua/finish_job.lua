-- finish_job: the running attempt ends the job: PROCESSING -> SUCCESS | FAILURE | CANCELLED,
-- then acknowledges and deletes its stream entry (ack only after the final state).
-- Idempotent: the same end re-sent (same attempt, status and result or error) finds
-- itself already applied and answers OK, so a worker may resend it after a dropped
-- connection without turning its own success into a refusal.
-- A job with a callback_url becomes due for its webhook (js_finish).
-- KEYS: 1 job hash, 2 owner active set, 3 queue stream, 4 webhook hash, 5 webhooks due zset
-- ARGV: 1 the partition's events channel, 2 attempt, 3 final status, 4 the result JSON (SUCCESS) or
--       the error JSON (FAILURE, CANCELLED), 5 retention s (0: deleted once published),
--       6 group, 7 entry id, 8 job id, 9 opts (MessagePack map): webhook_window (s)
-- Returns: {OK} | {NOT_FOUND} | {BAD_TRANSITION, status} | {STALE}
-- Publishes: the terminal job (not again for a re-sent end).
local job, active, stream = KEYS[1], KEYS[2], KEYS[3]
local hook = {key = KEYS[4], due = KEYS[5], id = ARGV[8], window = js_opts(ARGV[9]).webhook_window}
local status, payload = ARGV[3], ARGV[4]
local group, entry = ARGV[6], ARGV[7]
local cur = redis.call('HMGET', job, 'status', 'attempts', 'result', 'error')
if not cur[1] then
  return {NOT_FOUND}
end
if not TERMINAL[status] then
  return {BAD_TRANSITION, cur[1]}
end
if cur[1] ~= 'PROCESSING' then
  local mine = cur[1] == status and cur[2] == ARGV[2]
    and (status == 'SUCCESS' and cur[3] == payload or status ~= 'SUCCESS' and cur[4] == payload)
  if mine then
    js_ack(stream, group, entry)
    return {OK}
  end
  return {BAD_TRANSITION, cur[1]}
end
if cur[2] ~= ARGV[2] then
  return {STALE}
end
local now = js_now()
local changes = {status = status, completed_at = tostring(now), eta = false}
if status == 'SUCCESS' then
  changes.progress = '100'
  changes.result = payload
  changes.error = false
else
  changes.error = payload
end
js_finish(job, changes, tonumber(ARGV[5]), now, ARGV[1], hook)
redis.call('SREM', active, ARGV[8])
js_ack(stream, group, entry)
return {OK}
