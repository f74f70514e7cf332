-- webhook_outcome: what one delivery attempt of a completion webhook came to.
--   delivered (the receiver answered 2xx): webhook_state 'delivered', with delivered_at;
--   retry: due again `delay` ms from now, or at the deadline if that is sooner; once the
--     deadline has passed, a retry is a failure;
--   failed: webhook_state 'failed' with the error.
-- Delivered or failed, the webhook hash and its due entry go. The attempt counts in the
-- webhook hash. While the job's record is kept, it shows the state (webhook_state,
-- webhook_attempts, webhook_error, webhook_next_at, webhook_delivered_at) through
-- js_commit: a new version, published, its remaining TTL unchanged.
-- A retry or failure is written only by the sender whose claim still holds (its lease end is
-- the job's score in the due set); a delivery is written by whoever made it.
-- KEYS: 1 job hash, 2 webhook hash, 3 webhooks due zset
-- ARGV: 1 the partition's events channel, 2 job id, 3 the claim's lease end, 4 outcome ('delivered' |
--       'retry' | 'failed'), 5 error text (retry, failed), 6 retry delay ms
-- Returns: {OK, webhook state} | {NOT_FOUND} (no webhook: done, or expired; its due entry is
--          dropped) | {STALE} (the lease ran out and another sender claimed it)
-- Publishes: the job with its webhook state, while its record is kept.
local job, hook, due = KEYS[1], KEYS[2], KEYS[3]
local id, outcome = ARGV[2], ARGV[4]
if redis.call('EXISTS', hook) == 0 then
  redis.call('ZREM', due, id)
  return {NOT_FOUND}
end
if outcome ~= 'delivered' and tonumber(redis.call('ZSCORE', due, id) or '-1') ~= tonumber(ARGV[3]) then
  return {STALE}
end
local now = js_now()
local attempts = redis.call('HINCRBY', hook, 'attempts', 1)
local changes = {webhook_attempts = tostring(attempts), webhook_error = false, webhook_next_at = false}
local state = 'pending'
if outcome == 'retry' then
  local deadline = tonumber(redis.call('HGET', hook, 'deadline') or '0')
  if now < deadline then
    local at = math.min(now + tonumber(ARGV[6]), deadline)
    redis.call('ZADD', due, string.format('%.0f', at), id)
    changes.webhook_error = ARGV[5]
    changes.webhook_next_at = string.format('%.0f', at)
  else
    outcome = 'failed'
  end
end
if outcome == 'delivered' then
  state = 'delivered'
  changes.webhook_delivered_at = tostring(now)
elseif outcome == 'failed' then
  state = 'failed'
  changes.webhook_error = ARGV[5]
end
if state ~= 'pending' then
  changes.webhook_state = state
  redis.call('DEL', hook)
  redis.call('ZREM', due, id)
end
local ttl = redis.call('TTL', job)
if ttl > 0 then
  js_commit(job, changes, ttl, now, ARGV[1])
end
return {OK, state}
