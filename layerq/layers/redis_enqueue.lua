-- Store one message on a channel: ready now or after a delay, with its job record.
--
-- KEYS[1]  base "{prefix:channel}" (a hash tag: every key below shares its slot)
--          touches base..":msg" (HASH id -> payload), ":ready" (LIST of ids),
--          ":delay" (ZSET id -> due), ":exp" (ZSET id -> expiry of plain messages),
--          ":wake" (LIST of wake-up tokens), ":job:"..id (HASH, the job record),
--          ":local" (HASH process-local suffix -> messages stored for it)
--          Every key is in that one slot, so Redis Cluster accepts the script. The
--          locator "prefix:loc:<id>" of a job lives in another slot: the layer
--          SETs it in the same pipeline, just before this script.
-- ARGV[1]  message id (the job id for job messages)
-- ARGV[2]  payload (msgpack)
-- ARGV[3]  the rest, as one msgpack array (packing many small arguments was the
--          producer's largest cost per send):
--          [1] now (epoch seconds, a string)
--          [2] due: ready at this time (<= now: ready at once)
--          [3] expires at (0: durable, never expires)
--          [4] capacity: messages the channel may hold (ready, delayed and leased)
--          [5] process-local suffix ('' for other channels): the part after '!', whose
--              own count is held to the capacity, as every '!' channel shares one list
--          [6] job messages only: the record's field/value pairs (strings)
-- Returns 1 stored, 0 channel full (nothing stored), 2 already stored (a retried send).
local base = KEYS[1]
local msg = base .. ':msg'
local ready = base .. ':ready'
local exp = base .. ':exp'
local id = ARGV[1]
local meta = cmsgpack.unpack(ARGV[3])
local now = tonumber(meta[1])

-- Stored at once (HSETNX: a retried send finds its message there), taken back
-- below if the channel was already full.
if redis.call('HSETNX', msg, id, ARGV[2]) == 0 then
  return 2
end

local capacity = tonumber(meta[4])
local suffix = meta[5]
local counts = base .. ':local'
local function others()  -- messages stored besides this one
  if suffix ~= '' then
    return tonumber(redis.call('HGET', counts, suffix) or '0')
  end
  return redis.call('HLEN', msg) - 1
end
if others() >= capacity then
  -- Expired plain messages still count until something removes them; drop a
  -- bounded number before refusing, so a dead channel does not stay full.
  local gone = redis.call('ZRANGEBYSCORE', exp, '-inf', now, 'LIMIT', 0, 100)
  for _, old in ipairs(gone) do
    redis.call('HDEL', msg, old)
    redis.call('LREM', ready, 1, old)
    redis.call('ZREM', exp, old)
    local owner = string.match(old, '^%.[^!]*!(.+)$')
    if owner and redis.call('HINCRBY', counts, owner, -1) <= 0 then
      redis.call('HDEL', counts, owner)
    end
  end
  if others() >= capacity then
    redis.call('HDEL', msg, id)
    return 0
  end
end

if suffix ~= '' then
  redis.call('HINCRBY', counts, suffix, 1)
end
local due = tonumber(meta[2])
if due > now then
  redis.call('ZADD', base .. ':delay', due, id)
else
  redis.call('RPUSH', ready, id)
end
local expires = tonumber(meta[3])
if expires > 0 then
  redis.call('ZADD', exp, expires, id)
end
if meta[6] then
  local record = base .. ':job:' .. id
  redis.call('DEL', record)
  redis.call('HSET', record, unpack(meta[6]))
end
-- One token per message wakes one blocked receiver, up to 64 waiting tokens
-- (past that, a take that leaves messages behind passes a token on: see
-- redis_claim.lua). Checking the length first spares an LTRIM per send while
-- nobody consumes.
local wake = base .. ':wake'
if redis.call('LLEN', wake) < 64 then
  redis.call('RPUSH', wake, '1')
end
return 1
