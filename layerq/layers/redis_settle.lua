-- Settle one leased message: ack, retry, release, dead-letter or extend its lease.
-- Only the holder of the current lease may: a stale token changes nothing.
--
-- KEYS[1]  base "{prefix:channel}"; touches base..":lease", ":att", ":rel",
--          ":recl", ":msg", ":ready", ":delay", ":wake", ":dead" (HASH id ->
--          payload), ":deadinfo" (HASH id -> msgpack [reason, failed_at, job_id]),
--          ":deadq" (ZSET id -> failed_at), ":job:"..id (the job record; its
--          expires_at field mirrors the Redis TTL on layerq's clock, for tests),
--          ":done:"..id (LIST: the final record for waiters, when it is watched;
--          length-prefixed field/value pairs)
--          (The job's locator, in another slot, is given the record's TTL by a
--          PEXPIRE the layer pipelines after ack and dead.)
-- ARGV[1]  op: ack | retry | release | dead | extend
-- ARGV[2]  message id
-- ARGV[3]  lease token (the delivery count handed out by claim)
-- ARGV[4]  now (epoch seconds)
-- ack:     ARGV[5] record ttl (ms), ARGV[6] result (msgpack)
-- retry:   ARGV[5] due (epoch seconds), ARGV[6] error type, ARGV[7] error message
-- release: nothing more
-- dead:    ARGV[5] record ttl (ms), ARGV[6] error type, ARGV[7] error message,
--          ARGV[8] dead-letter info (msgpack)
-- extend:  ARGV[5] new lease deadline
-- Returns 1 done, 0 stale token (the lease expired and the message moved on).
local base = KEYS[1]
local op = ARGV[1]
local id = ARGV[2]
local lease = base .. ':lease'
local att = base .. ':att'

if not redis.call('ZSCORE', lease, id) or redis.call('HGET', att, id) ~= ARGV[3] then
  return 0
end
if op == 'extend' then
  redis.call('ZADD', lease, 'XX', ARGV[5], id)
  return 1
end

local record = base .. ':job:' .. id
local has_record = redis.call('EXISTS', record) == 1
local function wake()  -- as in redis_enqueue.lua
  local key = base .. ':wake'
  if redis.call('LLEN', key) < 64 then
    redis.call('RPUSH', key, '1')
  end
end

-- The record's field/value pairs, each a 4-byte big-endian length and its
-- bytes: binary-safe, unlike cmsgpack, which tags every string as UTF-8 text.
local function packed(key)
  local parts = {}
  for i, value in ipairs(redis.call('HGETALL', key)) do
    parts[i] = struct.pack('>I4', #value) .. value
  end
  return table.concat(parts)
end

-- A waiter (redis_watch.lua) marked the record: leave it the final record
-- (packed as above), which wakes every waiter (they rotate it,
-- BLMOVE) and spares each a read; gone by itself after a few seconds.
local function done()
  if redis.call('HDEL', record, 'watch') == 1 then
    local key = base .. ':done:' .. id
    redis.call('RPUSH', key, packed(record))
    redis.call('PEXPIRE', key, 10000)
  end
end

redis.call('ZREM', lease, id)
redis.call('SREM', base .. ':recl', id)

if op == 'ack' then
  redis.call('HDEL', base .. ':msg', id)
  redis.call('HDEL', att, id)
  redis.call('HDEL', base .. ':rel', id)
  if has_record then
    redis.call('HSET', record, 'status', 'succeeded', 'finished_at', ARGV[4], 'result', ARGV[6],
      'progress', '1.0', 'expires_at', ARGV[4] + ARGV[5] / 1000)
    redis.call('HDEL', record, 'error_type', 'error_message')
    redis.call('PEXPIRE', record, ARGV[5])
    done()
  end
elseif op == 'retry' then
  if tonumber(ARGV[5]) > tonumber(ARGV[4]) then
    redis.call('ZADD', base .. ':delay', ARGV[5], id)
  else
    redis.call('RPUSH', base .. ':ready', id)
  end
  wake()
  if has_record then
    redis.call('HSET', record, 'status', 'retrying', 'error_type', ARGV[6], 'error_message', ARGV[7])
  end
elseif op == 'release' then
  -- Back to the head, and the delivery is not counted as an attempt.
  local released = redis.call('HINCRBY', base .. ':rel', id, 1)
  redis.call('LPUSH', base .. ':ready', id)
  wake()
  if has_record then
    local attempt = tonumber(ARGV[3]) - released
    redis.call('HSET', record, 'status', 'queued', 'attempt', attempt)
  end
elseif op == 'dead' then
  local msg = base .. ':msg'
  local payload = redis.call('HGET', msg, id)
  if payload then
    redis.call('HSET', base .. ':dead', id, payload)
    redis.call('HSET', base .. ':deadinfo', id, ARGV[8])
    redis.call('ZADD', base .. ':deadq', ARGV[4], id)
  end
  redis.call('HDEL', msg, id)
  redis.call('HDEL', base .. ':rel', id)
  if has_record then
    redis.call('HSET', record, 'status', 'failed', 'finished_at', ARGV[4],
      'error_type', ARGV[6], 'error_message', ARGV[7], 'expires_at', ARGV[4] + ARGV[5] / 1000)
    redis.call('PEXPIRE', record, ARGV[5])
    done()
  end
else
  return redis.error_reply('unknown settle op ' .. op)
end
return 1
