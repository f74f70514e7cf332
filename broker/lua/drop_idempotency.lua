-- drop_idempotency: delete an idempotency key whose job is gone, but only while the key
-- still names that job (a new request may have taken the key over since it was read).
-- KEYS: 1 idempotency key
-- ARGV: 1 the (gone) job id it must still name
-- Returns: {OK} (deleted) | {SKIPPED} (gone already, or names another job now)
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return {OK}
end
return {SKIPPED}
