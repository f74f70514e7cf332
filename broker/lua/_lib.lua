-- _lib.lua: shared by every state-change script; scripts.py prepends it at load time.
-- Result codes (must match broker.errors.ScriptCode).
local OK, NOT_FOUND, BAD_TRANSITION, STALE, DUPLICATE, QUOTA, SKIPPED = 0, 1, 2, 3, 4, 5, 6

-- Server time in epoch microseconds and milliseconds, so every process shares one clock.
local function js_now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function js_now()
  return math.floor(js_now_us() / 1000)
end

local TERMINAL = {SUCCESS = true, FAILURE = true, CANCELLED = true}

-- The optional arguments of a call: one MessagePack map, the script's last ARGV. A key
-- left out takes the script's default, so a new option shifts no position.
local function js_opts(packed)
  if not packed or packed == '' then
    return {}
  end
  return cmsgpack.unpack(packed)
end

-- Apply `changes` (field -> string; false deletes the field), stamp `updated_at` and
-- `expires_at` from `now` (Redis TIME, ms), bump `version`, keep the record `ttl` seconds
-- (0: not at all, it is deleted once published) and publish the whole record on `channel`,
-- the partition's events shard channel (SPUBLISH: it shares the job's hash tag, so on
-- Cluster it goes out from the job's own node): a header line ["<id>","<owner>"], so a
-- reader routes the event without decoding the record, then the record as a JSON array
-- [field, value, ...]. The only way a script writes a job, so no change goes unstamped or
-- unpublished. Returns the record as a flat HGETALL array.
local function js_commit(key, changes, ttl, now, channel)
  local set, del = {}, {}
  for field, value in pairs(changes) do
    if value == false then
      del[#del + 1] = field
    else
      set[#set + 1] = field
      set[#set + 1] = value
    end
  end
  if #del > 0 then
    redis.call('HDEL', key, unpack(del))
  end
  set[#set + 1] = 'updated_at'
  set[#set + 1] = tostring(now)
  set[#set + 1] = 'expires_at'
  set[#set + 1] = tostring(now + ttl * 1000)
  redis.call('HSET', key, unpack(set))
  redis.call('HINCRBY', key, 'version', 1)
  local flat = redis.call('HGETALL', key)
  if ttl > 0 then
    redis.call('EXPIRE', key, ttl)
  else
    redis.call('DEL', key)
  end
  local id, owner = '', ''
  for i = 1, #flat, 2 do
    if flat[i] == 'id' then
      id = flat[i + 1]
    elseif flat[i] == 'owner' then
      owner = flat[i + 1]
    end
  end
  redis.call('SPUBLISH', channel, cjson.encode({id, owner}) .. '\n' .. cjson.encode(flat))
  return flat
end

-- Acknowledge and delete a stream entry: the stream holds in-flight work only.
local function js_ack(stream, group, id)
  redis.call('XACK', stream, group, id)
  redis.call('XDEL', stream, id)
end

-- True while `consumer` still holds the entry `id` (its lease was not taken over).
local function js_owns(stream, group, id, consumer)
  return #redis.call('XPENDING', stream, group, id, id, 1, consumer) == 1
end

-- js_commit for a change into a terminal state. A job created with a callback_url becomes
-- due for its completion webhook in the same change: webhook_state 'pending' on the record,
-- and a webhook hash (`hook.key`) holding a snapshot of the terminal record, the URL, the
-- attempts and the deadline (now + `hook.window` s), kept an hour past the deadline, so a
-- retention shorter than the delivery window (or 0) loses nothing; its id goes into the due
-- set (`hook.due`) by Redis time. A job with no callback_url pays one HGET.
local function js_finish(job, changes, ttl, now, channel, hook)
  local url = redis.call('HGET', job, 'callback_url')
  if url then
    changes.webhook_state = 'pending'
    changes.webhook_next_at = tostring(now)
  end
  local flat = js_commit(job, changes, ttl, now, channel)
  if url then
    local window = tonumber(hook.window or 0)  -- 0: one attempt
    redis.call('HSET', hook.key, 'record', cjson.encode(flat), 'url', url, 'attempts', '0',
      'deadline', tostring(now + window * 1000))
    redis.call('EXPIRE', hook.key, window + 3600)
    redis.call('ZADD', hook.due, now, hook.id)
  end
  return flat
end
