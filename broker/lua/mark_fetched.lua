-- mark_fetched: the first fetch of a finished keep_until_fetched job's result. Its record
-- then expires `grace` seconds from now, or sooner if its retention ends sooner (EXPIRE LT
-- shortens a TTL, never lengthens it). A fetch is not a change of the job: no version bump,
-- no event; `fetched_at` and the new `expires_at` are written so every later read says so.
-- KEYS: 1 job hash
-- ARGV: 1 grace seconds (0: deleted now)
-- Returns: {OK, expires_at ms} | {SKIPPED} (no such job, not kept until fetched, not ended,
--          or fetched before)
-- Publishes: nothing.
local job, grace = KEYS[1], tonumber(ARGV[1])
local cur = redis.call('HMGET', job, 'keep_until_fetched', 'status', 'fetched_at')
if not cur[1] or not TERMINAL[cur[2]] or cur[3] then
  return {SKIPPED}
end
local now = js_now()
if grace <= 0 then
  redis.call('DEL', job)
  return {OK, now}
end
redis.call('EXPIRE', job, grace, 'LT')
local expires = now + redis.call('PTTL', job)
redis.call('HSET', job, 'fetched_at', tostring(now), 'expires_at', tostring(expires))
return {OK, expires}
