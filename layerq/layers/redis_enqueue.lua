-- Store messages on one channel: each ready now or after a delay, a job's with its record.
--
-- KEYS[1]  base "{prefix:channel}" (a hash tag: every key below shares its slot)
--          touches base..":msg" (HASH id -> payload), ":ready" (LIST of ids),
--          ":delay" (ZSET id -> due), ":exp" (ZSET id -> expiry of plain messages),
--          ":wake" (LIST of wake-up tokens), ":job:"..id (HASH, the job record),
--          ":local" (HASH process-local suffix -> messages stored for it)
--          Every key is in that one slot, so Redis Cluster accepts the script. The
--          locator "prefix:loc:<id>" of a job lives in another slot: the layer
--          SETs it in the same pipeline, just before this script.
-- ARGV     five arguments shared by the messages of the call, then the messages:
--          1 now (epoch seconds)
--          2 due: ready at this time (<= now: ready at once)
--          3 expires at (0: durable, never expires)
--          4 capacity: messages the channel may hold (ready, delayed and leased)
--          5 process-local suffix ('' for other channels): the part after '!', whose
--            own count is held to the capacity, as every '!' channel shares one list
--          then a run of messages (one for a send, up to a few hundred for
--          send_many), two arguments each: the message id (the job id for job
--          messages) and its payload (msgpack)
-- A job (a message whose id does not start with '.') gets no record hash here: while
-- it waits, its record is read from its payload (see RedisChannelLayer.get_record);
-- the claim, settles and cancel write the hash. A record left by an earlier send of
-- the same id (a send retried after its job ended) is deleted, so it cannot speak
-- for this one.
-- Returns one flag a message: 1 stored, 0 channel full (nothing stored), 2 already
-- stored (a retried send).
local base = KEYS[1]
local msg = base .. ':msg'
local ready = base .. ':ready'
local exp = base .. ':exp'
local counts = base .. ':local'

-- Messages stored, by suffix ('' for the channel's own count), read once a call.
local held = {}
local function count(suffix)
  if held[suffix] == nil then
    if suffix ~= '' then
      held[suffix] = tonumber(redis.call('HGET', counts, suffix) or '0')
    else
      held[suffix] = redis.call('HLEN', msg)
    end
  end
  return held[suffix]
end

-- Expired plain messages still count until something removes them; drop a
-- bounded number (once a call) before refusing, so a dead channel does not stay full.
local swept = false
local function sweep(now)
  swept = true
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
  held = {}
end

local now = tonumber(ARGV[1])
local due = tonumber(ARGV[2])
local expires = tonumber(ARGV[3])
local capacity = tonumber(ARGV[4])
local suffix = ARGV[5]
local flags = {}
local now_ready = {}
local stored = 0
for i = 6, #ARGV, 2 do
  local id = ARGV[i]
  local flag = 1
  if count(suffix) >= capacity and not swept then
    sweep(now)
  end
  if count(suffix) >= capacity then
    -- Full; or already stored (a retried send), which is not a refusal.
    flag = redis.call('HEXISTS', msg, id) == 1 and 2 or 0
  elseif redis.call('HSETNX', msg, id, ARGV[i + 1]) == 0 then
    flag = 2
  end
  if flag == 1 then
    stored = stored + 1
    held[suffix] = held[suffix] + 1
    if suffix ~= '' then
      redis.call('HINCRBY', counts, suffix, 1)
    end
    if due > now then
      redis.call('ZADD', base .. ':delay', ARGV[2], id)
    else
      now_ready[#now_ready + 1] = id
    end
    if expires > 0 then
      redis.call('ZADD', exp, ARGV[3], id)
    end
    if string.byte(id, 1) ~= 46 then
      redis.call('DEL', base .. ':job:' .. id)
    end
  end
  flags[#flags + 1] = flag
end
-- Wake a blocked receiver when this call made the ready list non-empty (or, with
-- delayed messages only, stored some while it is empty: the receiver learns
-- when they fall due). While the list stays non-empty no token is pushed: a take
-- that leaves messages behind passes one on (redis_claim.lua), so receivers of
-- a busy channel wake one after another, and a send costs no wake-up call.
local woke = false
if #now_ready > 0 then
  woke = redis.call('RPUSH', ready, unpack(now_ready)) == #now_ready
elseif stored > 0 then
  woke = redis.call('LLEN', ready) == 0
end
if woke then
  local wake = base .. ':wake'
  if redis.call('RPUSH', wake, '1') > 64 then
    -- Tokens nobody took (the list was emptied by cancels): keep a bounded few.
    redis.call('LTRIM', wake, -64, -1)
  end
end
return flags
