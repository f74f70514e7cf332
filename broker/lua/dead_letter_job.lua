-- dead_letter_job: an entry delivered more than max_deliveries times moves to the dead
-- stream, and its job, if still active, ends FAILURE with the given error.
-- A job with a callback_url becomes due for its webhook (js_finish).
-- KEYS: 1 job hash, 2 owner active set, 3 queue stream, 4 dead stream, 5 webhook hash,
--       6 webhooks due zset
-- ARGV: 1 the partition's events channel, 2 group, 3 consumer, 4 entry id, 5 message,
--       6 error JSON, 7 retention s (0: deleted once published), 8 job id, 9 deliveries,
--       10 opts (MessagePack map): webhook_window (s)
-- Returns: {OK} (job failed) | {SKIPPED} (job already ended or gone) | {STALE} (entry not ours)
-- Publishes: the FAILURE job.
local job, active, stream, dead = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if not js_owns(stream, ARGV[2], ARGV[4], ARGV[3]) then
  return {STALE}
end
local now = js_now()
redis.call('XADD', dead, '*', 'data', ARGV[5], 'job', ARGV[8], 'entry', ARGV[4],
  'deliveries', ARGV[9], 'at', tostring(now))
js_ack(stream, ARGV[2], ARGV[4])
local status = redis.call('HGET', job, 'status')
if status == 'PENDING' or status == 'PROCESSING' then
  local hook = {key = KEYS[5], due = KEYS[6], id = ARGV[8], window = js_opts(ARGV[10]).webhook_window}
  js_finish(job, {status = 'FAILURE', completed_at = tostring(now), error = ARGV[6], eta = false},
    tonumber(ARGV[7]), now, ARGV[1], hook)
  redis.call('SREM', active, ARGV[8])
  return {OK}
end
return {SKIPPED}
