-- reclaim: take over entries whose lease ran out (idle longer than the lease), with the
-- delivery count of each so the caller can dead-letter those delivered too often.
-- XAUTOCLAIM is atomic, so concurrent reclaimers never get the same entry; no lock.
-- KEYS: 1 queue stream
-- ARGV: 1 group, 2 consumer, 3 min idle ms, 4 count
-- Returns: {{entry id, {field, value, ...}, deliveries}, ...}
local stream, group = KEYS[1], ARGV[1]
local claimed = redis.call('XAUTOCLAIM', stream, group, ARGV[2], ARGV[3], '0-0', 'COUNT', ARGV[4])
local out = {}
for _, entry in ipairs(claimed[2]) do
  if entry[2] then
    local pending = redis.call('XPENDING', stream, group, entry[1], entry[1], 1)
    out[#out + 1] = {entry[1], entry[2], pending[1][4]}
  end
end
return out
