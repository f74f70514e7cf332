-- expire_heartbeat: a worker heartbeat must never outlive its worker. One found without a
-- TTL is dropped when its last beat is older than `max age`, else given `max age` as TTL
-- (a live worker's next beat sets its own). One with a TTL is left alone.
-- KEYS: 1 worker heartbeat hash
-- ARGV: 1 max age ms
-- Returns: {OK, 1} (dropped) | {OK, 0} (TTL set) | {SKIPPED} (has a TTL, or is gone)
local beat = KEYS[1]
if redis.call('PTTL', beat) ~= -1 then
  return {SKIPPED}
end
local max_age = tonumber(ARGV[1])
local seen_at = tonumber(redis.call('HGET', beat, 'seen_at') or '0') or 0
if js_now() - seen_at > max_age then
  redis.call('DEL', beat)
  return {OK, 1}
end
redis.call('PEXPIRE', beat, max_age)
return {OK, 0}
