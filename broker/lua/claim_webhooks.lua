-- claim_webhooks: a sender takes up to `limit` due completion webhooks, each leased until
-- now + lease: its score in the due set becomes the lease's end, so a sender that dies
-- mid-delivery loses it to the next claim once the lease is over (delivered at least once).
-- The lease's end is the claim's token: webhook_outcome writes a retry or a failure only for
-- the sender whose lease still holds.
-- KEYS: 1 webhooks due zset
-- ARGV: 1 lease ms, 2 max webhooks to claim
-- Returns: {lease end ms, {job id...}, ms until the next due one (a claimed one's lease
--          end included) or -1}
-- Publishes: nothing.
local due = KEYS[1]
local now = js_now()
local lease_end = now + tonumber(ARGV[1])
local ids = redis.call('ZRANGE', due, '-inf', now, 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  redis.call('ZADD', due, 'XX', string.format('%.0f', lease_end), id)
end
local next_due = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
local wait = -1
if #next_due > 0 then
  wait = math.max(0, tonumber(next_due[2]) - now)
end
return {lease_end, ids, wait}
