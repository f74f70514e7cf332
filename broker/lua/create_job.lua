-- create_job: a new PENDING job, indexed for its owner and for admins, counted, and queued
-- (or scheduled). Both indexes are scored by one creation sequence: Redis time in
-- microseconds, raised to one past either index's newest score when the clock has not
-- moved on (or went back), so listing order is creation order even for jobs made within
-- one microsecond, in the owner's listing and in the partition's.
-- KEYS: 1 job hash, 2 owner index (zset), 3 owner active set, 4 idempotency key (without
--       one: any name in the job's slot, never touched),
--       5 queue stream, 6 queue delayed zset, 7 the partition's index of every job (zset),
--       8 the partition's counts (hash; field created:<type> += 1)
-- ARGV: 1 the partition's events channel, 2 id, 3 type, 4 owner, 5 queue, 6 input JSON,
--       7 active TTL s, 8 Taskiq message, 9 opts (MessagePack map, every key optional):
--       max_active (active-job quota; none when absent), idempotency_ttl (s; no key when
--       absent), run_at (epoch ms; now when absent), delay_ms (from now by the server
--       clock; used instead of run_at when given), replace_idempotency (true: replace a
--       dangling idempotency key), timeout (the job's own, seconds as text), labels (JSON
--       object text), created_by (the service that created it for its owner),
--       keep_until_fetched (true: its record goes once its result is fetched),
--       callback_url (the completion webhook's URL, checked by the caller against the
--       allowed hosts)
-- Returns: {OK, flat record} | {DUPLICATE, existing id} | {QUOTA}
--   A job that already exists under ARGV[2] answers {DUPLICATE, ARGV[2]}: a create re-sent
--   after a lost reply finds its own job, and the caller takes it as created.
-- Publishes: the PENDING job.
local job, index, active, idem, stream, delayed = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local all_jobs, counts = KEYS[7], KEYS[8]
local id, ttl, message = ARGV[2], tonumber(ARGV[7]), ARGV[8]
local opts = js_opts(ARGV[9])
local quota, idem_ttl = opts.max_active or 0, opts.idempotency_ttl or 0

if idem_ttl > 0 and not opts.replace_idempotency then
  local existing = redis.call('GET', idem)
  if existing then
    return {DUPLICATE, existing}
  end
end
if redis.call('EXISTS', job) == 1 then
  return {DUPLICATE, id}
end
if quota > 0 and redis.call('SCARD', active) >= quota then
  return {QUOTA}
end

local now_us = js_now_us()
local now = math.floor(now_us / 1000)
local run_at = opts.run_at or 0
if opts.delay_ms and opts.delay_ms > 0 then
  run_at = now + opts.delay_ms
end
local changes = {
  id = id, type = ARGV[3], status = 'PENDING', progress = '0', owner = ARGV[4],
  queue = ARGV[5], input = ARGV[6], attempts = '0', created_at = tostring(now), dispatch = '1',
}
if run_at > now then
  changes.run_at = tostring(run_at)
end
changes.timeout = opts.timeout
changes.labels = opts.labels
changes.created_by = opts.created_by
changes.callback_url = opts.callback_url
if opts.keep_until_fetched then
  changes.keep_until_fetched = '1'
end
local flat = js_commit(job, changes, ttl, now, ARGV[1])
local seq = now_us
for _, key in ipairs({index, all_jobs}) do
  local newest = redis.call('ZRANGE', key, 0, 0, 'REV', 'WITHSCORES')
  if newest[2] and tonumber(newest[2]) >= seq then
    seq = tonumber(newest[2]) + 1
  end
end
seq = string.format('%.0f', seq)
redis.call('ZADD', index, seq, id)
redis.call('ZADD', all_jobs, seq, id)
redis.call('HINCRBY', counts, 'created:' .. ARGV[3], 1)
redis.call('SADD', active, id)
if idem_ttl > 0 then
  redis.call('SET', idem, id, 'EX', idem_ttl)
end
if run_at > now then
  redis.call('ZADD', delayed, run_at, message)
else
  redis.call('XADD', stream, '*', 'data', message)
end
return {OK, flat}
