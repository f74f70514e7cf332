-- promote_due: move messages whose time has come from a queue's delayed set to its stream.
-- Atomic, so several workers promoting at once never queue a message twice.
-- KEYS: 1 queue delayed zset, 2 queue stream
-- ARGV: 1 max messages to move
-- Returns: {moved, ms until the next due message or -1}
local delayed, stream = KEYS[1], KEYS[2]
local now = js_now()
local due = redis.call('ZRANGE', delayed, '-inf', now, 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[1]))
for _, message in ipairs(due) do
  redis.call('XADD', stream, '*', 'data', message)
  redis.call('ZREM', delayed, message)
end
local next_due = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
if #next_due == 0 then
  return {#due, -1}
end
return {#due, math.max(0, tonumber(next_due[2]) - now)}
