-- renew_leases: a live worker keeps the entries it still holds (reset their idle time),
-- or, with a large idle, hands them back so that others reclaim them at once.
-- Entries another consumer has taken over are left alone and reported lost.
-- KEYS: 1 queue stream
-- ARGV: 1 group, 2 consumer, 3 idle ms to set, 4.. entry ids
-- Returns: the entry ids this consumer no longer holds
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local lost = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  if js_owns(stream, group, id, consumer) then
    redis.call('XCLAIM', stream, group, consumer, 0, id, 'IDLE', ARGV[3], 'JUSTID')
  else
    lost[#lost + 1] = id
  end
end
return lost
