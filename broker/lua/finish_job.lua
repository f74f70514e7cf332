-- finish_job: the running attempt ends the job: PROCESSING -> SUCCESS | FAILURE | CANCELLED,
-- then acknowledges and deletes its stream entry (ack only after the final state).
-- Idempotent: the same end re-sent (same attempt, status and result or error) finds
-- itself already applied and answers OK, so a worker may resend it after a dropped
-- connection without turning its own success into a refusal.
-- KEYS: 1 job hash, 2 owner active set, 3 queue stream
-- ARGV: 1 owner channel prefix, 2 attempt, 3 final status, 4 result JSON (SUCCESS),
--       5 error JSON (FAILURE, CANCELLED), 6 retention s, 7 group, 8 entry id, 9 job id
-- Returns: {OK} | {NOT_FOUND} | {BAD_TRANSITION, status} | {STALE}
-- Publishes: the terminal job (not again for a re-sent end).
local job, active, stream = KEYS[1], KEYS[2], KEYS[3]
local status = ARGV[3]
local cur = redis.call('HMGET', job, 'status', 'attempts', 'result', 'error')
if not cur[1] then
  return {NOT_FOUND}
end
if not TERMINAL[status] then
  return {BAD_TRANSITION, cur[1]}
end
if cur[1] ~= 'PROCESSING' then
  local mine = cur[1] == status and cur[2] == ARGV[2]
    and (status == 'SUCCESS' and cur[3] == ARGV[4] or status ~= 'SUCCESS' and cur[4] == ARGV[5])
  if mine then
    js_ack(stream, ARGV[7], ARGV[8])
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
  changes.result = ARGV[4]
  changes.error = false
else
  changes.error = ARGV[5]
end
js_commit(job, changes, tonumber(ARGV[6]), now, ARGV[1])
redis.call('SREM', active, ARGV[9])
js_ack(stream, ARGV[7], ARGV[8])
return {OK}
