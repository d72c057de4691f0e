-- Settle leased messages: ack, retry, release, dead-letter or extend a lease.
-- One call settles a run of messages of one channel (a worker's acks of one
-- loop turn go as one call): ARGV is a run of groups, each its length then its
-- fields, as below.
-- Only the holder of the current lease may: a stale token changes nothing.
--
-- KEYS[1]  base "{prefix:channel}"; touches base..":lease", ":att", ":rel",
--          ":msg", ":ready", ":delay", ":wake", ":dead" (HASH id ->
--          payload), ":deadinfo" (HASH id -> msgpack [reason, failed_at, job_id]),
--          ":deadq" (ZSET id -> failed_at), ":job:"..id (the job record; its
--          ttl field (ms) after finished_at is the Redis TTL on layerq's clock,
--          for tests; in the script's own strings: Lua would format a sum),
--          ":done:"..id (LIST: a wake-up token for waiters, when it is watched)
--          (The job's locator, in another slot, is given the record's TTL by a
--          PEXPIRE the layer pipelines after ack and dead.)
-- A group's fields (numbered from 1 after its length):
-- 1  op: ack | retry | release | dead | extend | start
-- 2  message id
-- 3  lease token (the delivery count handed out by claim)
-- 4  now (epoch seconds)
-- ack:     5 record ttl (ms), 6 result (msgpack), 7 the record's fixed fields
-- retry:   5 due (epoch seconds), 6 error type, 7 error message
-- release: nothing more
-- dead:    5 record ttl (ms), 6 error type, 7 error message,
--          8 dead-letter info (msgpack), 9 the record's fixed fields
-- extend:  5 new lease deadline
-- start:   5 attempt (a prefetched job starts: its record says it runs, as
--          redis_claim.lua marks the records of the jobs that start at once)
-- The fixed fields (id, type, channel, enqueued_at, max_attempts) come from the
-- job's envelope, as one msgpack array of field/value pairs (one argument, not
-- ten: the worker pays for each): until a job ends its record hash holds only
-- what changed, the rest is read from the payload (see redis_enqueue.lua); an
-- ended job's payload is gone, so its record keeps them, as they came, in its
-- field 'fixed' (the layer unpacks them as it reads the record: unpacked
-- here, they cost Redis more than the rest of an ack). (The worker reads them
-- from the payload: Redis's cmsgpack cannot read one that holds bytes.)
-- A message is a job when its id does not start with '.' (plain messages' ids do).
-- Returns one item a group: 1 done, 0 stale token (the lease expired and the
-- message moved on).
local base = KEYS[1]
local lease = base .. ':lease'
local att = base .. ':att'
local rel = base .. ':rel'

-- Whether any message of the channel was released (has a count in ":rel"):
-- looked up once a call, not an HDEL for every message that ends (most calls
-- end a batch of acks, and releases are rare).
local released_any = nil
local function forget_releases(id)
  if released_any == nil then
    released_any = redis.call('EXISTS', rel) == 1
  end
  if released_any then
    redis.call('HDEL', rel, id)
  end
end

-- A message back on the ready list (``length`` after the push; nil for a
-- delayed one): wake a receiver if the list was empty, as redis_enqueue.lua does.
local function wake(length)
  if length == nil then
    length = redis.call('LLEN', base .. ':ready') + 1
  end
  if length == 1 then
    local key = base .. ':wake'
    if redis.call('RPUSH', key, '1') > 64 then
      redis.call('LTRIM', key, -64, -1)
    end
  end
end

-- A waiter (redis_watch.lua) marked the record: leave a token on its done list,
-- which wakes every waiter (they rotate it, BLMOVE), each then reading the
-- record in the same round trip; gone by itself after a few seconds.
local function done(record, id)
  if redis.call('HDEL', record, 'watch') == 1 then
    local key = base .. ':done:' .. id
    redis.call('RPUSH', key, '1')
    redis.call('PEXPIRE', key, 10000)
  end
end

local function settle(A)
  local op, id = A[1], A[2]
  -- The current lease's token (a string compare), then the lease itself.
  -- (ZRANK and ZREM say whether it is there without a score: Redis formats
  -- one as text for a script, with snprintf, which costs more than the call.)
  if redis.call('HGET', att, id) ~= A[3] then
    return 0
  end
  if op == 'extend' or op == 'start' then
    if not redis.call('ZRANK', lease, id) then
      return 0
    end
    if op == 'extend' then
      redis.call('ZADD', lease, 'XX', A[5], id)
    elseif string.byte(id, 1) ~= 46 then
      redis.call('HSET', base .. ':job:' .. id,
        'status', 'running', 'attempt', A[5], 'started_at', A[4])
    end
    return 1
  end
  -- The other ops end the lease: gone already, it expired and the message
  -- moved on. (Not in ":recl" either: a claim takes an id out of it as it
  -- leases it, and puts it back only once the lease has expired.)
  if redis.call('ZREM', lease, id) == 0 then
    return 0
  end

  local record = base .. ':job:' .. id
  local is_job = string.byte(id, 1) ~= 46

  if op == 'ack' then
    redis.call('HDEL', base .. ':msg', id)
    redis.call('HDEL', att, id)
    forget_releases(id)
    if is_job then
      redis.call('HSET', record, 'status', 'succeeded', 'finished_at', A[4], 'result', A[6],
        'progress', '1.0', 'ttl', A[5], 'fixed', A[7])
      if A[3] ~= '1' then
        -- An earlier delivery may have left its error (tokens never repeat,
        -- and requeued dead letters start without one).
        redis.call('HDEL', record, 'error_type', 'error_message')
      end
      redis.call('PEXPIRE', record, A[5])
      done(record, id)
    end
  elseif op == 'retry' then
    if tonumber(A[5]) > tonumber(A[4]) then
      redis.call('ZADD', base .. ':delay', A[5], id)
      wake(nil)
    else
      wake(redis.call('RPUSH', base .. ':ready', id))
    end
    if is_job then
      redis.call('HSET', record, 'status', 'retrying', 'error_type', A[6], 'error_message', A[7])
    end
  elseif op == 'release' then
    -- Back to the head, and the delivery is not counted as an attempt.
    -- (No need to note it in released_any: a group after this one for the same
    -- id holds a lease it no longer has, so it never gets to forget_releases.)
    local released = redis.call('HINCRBY', rel, id, 1)
    wake(redis.call('LPUSH', base .. ':ready', id))
    if is_job then
      local attempt = tonumber(A[3]) - released
      redis.call('HSET', record, 'status', 'queued', 'attempt', attempt)
    end
  elseif op == 'dead' then
    local msg = base .. ':msg'
    local payload = redis.call('HGET', msg, id)
    if payload then
      redis.call('HSET', base .. ':dead', id, payload)
      redis.call('HSET', base .. ':deadinfo', id, A[8])
      redis.call('ZADD', base .. ':deadq', A[4], id)
    end
    redis.call('HDEL', msg, id)
    forget_releases(id)
    if is_job then
      redis.call('HSET', record, 'status', 'failed', 'finished_at', A[4],
        'error_type', A[6], 'error_message', A[7], 'ttl', A[5],
        'fixed', A[9])
      redis.call('PEXPIRE', record, A[5])
      done(record, id)
    end
  else
    return redis.error_reply('unknown settle op ' .. op)
  end
  return 1
end

local results = {}
local i = 1
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  results[#results + 1] = settle({unpack(ARGV, i + 1, i + n)})
  i = i + n + 1
end
return results
