-- Cancel a job that is still waiting (ready or delayed, not leased).
--
-- KEYS[1]  base "{prefix:channel}"; touches base..":msg", ":lease", ":ready",
--          ":delay", ":exp", ":att", ":rel", ":recl", ":job:"..id, ":done:"..id
--          (a wake-up token for waiters, when redis_watch.lua marked it)
--          (The layer gives the job's locator, in another slot, the record's TTL
--          once this returns 1.)
-- ARGV[1]  job id (= message id)
-- ARGV[2]  now (epoch seconds)
-- ARGV[3]  record ttl (ms)
-- ARGV[4]  the record's fixed field/value pairs (id, type, channel, enqueued_at,
--          max_attempts) as one msgpack array, read by the layer from the stored
--          message (cmsgpack cannot read one that holds bytes), kept as they
--          are in the record's field 'fixed' (see redis_settle.lua): while a
--          job waits its record is read from its payload (redis_enqueue.lua),
--          which goes now
-- Returns 1 cancelled, 0 not waiting (running, finished or unknown).
local base = KEYS[1]
local id = ARGV[1]
local msg = base .. ':msg'
if redis.call('HEXISTS', msg, id) == 0 or redis.call('ZSCORE', base .. ':lease', id) then
  return 0
end
-- LREM is O(n) in the backlog; cancelling is rare and must not leave the id
-- behind, or a later message with the same id would be delivered twice.
redis.call('LREM', base .. ':ready', 1, id)
redis.call('ZREM', base .. ':delay', id)
redis.call('ZREM', base .. ':exp', id)
redis.call('HDEL', msg, id)
redis.call('HDEL', base .. ':att', id)
redis.call('HDEL', base .. ':rel', id)
redis.call('SREM', base .. ':recl', id)
local record = base .. ':job:' .. id
if string.byte(id, 1) ~= 46 then
  redis.call('HSET', record, 'status', 'cancelled', 'finished_at', ARGV[2],
    'ttl', ARGV[3], 'fixed', ARGV[4])
  redis.call('PEXPIRE', record, ARGV[3])
  if redis.call('HDEL', record, 'watch') == 1 then
    local done = base .. ':done:' .. id
    redis.call('RPUSH', done, '1')
    redis.call('PEXPIRE', done, 10000)
  end
end
return 1
