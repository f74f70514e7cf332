-- claim_tick: claim the current tick of a periodic maintenance run (cleanup, reaper) for
-- one scheduler replica, so that with several replicas each tick runs exactly once.
-- A tick is a slot of `period` ms of server time (one clock for every replica); the hash
-- keeps the start of the last claimed slot, so a slot is claimed at most once, whatever
-- the replicas' own clocks say. It also counts claims (`runs`) and tries (`attempts`).
-- KEYS: 1 tick hash (slot, claimant, claimed_at, runs, attempts, and the run counters)
-- ARGV: 1 period ms, 2 claimant name, 3 hash TTL ms (refreshed on every try)
-- Returns: {OK, slot start ms, ms until the next slot}
--        | {SKIPPED, slot start ms, ms until the next slot} (another replica has it)
local tick = KEYS[1]
local period = tonumber(ARGV[1])
local now = js_now()
local slot = now - now % period
local wait = slot + period - now
redis.call('HINCRBY', tick, 'attempts', 1)
redis.call('PEXPIRE', tick, ARGV[3])
local last = tonumber(redis.call('HGET', tick, 'slot') or '-1')
if last >= slot then
  return {SKIPPED, slot, wait}
end
redis.call('HSET', tick, 'slot', tostring(slot), 'claimant', ARGV[2], 'claimed_at', tostring(now))
redis.call('HINCRBY', tick, 'runs', 1)
return {OK, slot, wait}
