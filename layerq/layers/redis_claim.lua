-- Take up to `limit` ready messages of one channel: lease them (claim) or
-- remove them for good (receive, at most once).
--
-- KEYS[1]  base "{prefix:channel}"; touches base..":ready", ":msg", ":delay",
--          ":lease" (ZSET id -> lease deadline), ":att" (HASH id -> deliveries,
--          also the lease token), ":rel" (HASH id -> releases, not counted as
--          attempts), ":recl" (SET of ids whose lease expired), ":exp", ":wake",
--          ":job:"..id (job records), ":local" (HASH process-local suffix -> count;
--          a plain message for a '!' channel has the id ".<random>!<suffix>")
-- ARGV[1]  now (epoch seconds)
-- ARGV[2]  limit
-- ARGV[3]  lease deadline; 0 means receive: delete the messages as they are taken
-- ARGV[4]  how many of the jobs taken start now, their records marked running
--          (absent: all); the rest (a worker's prefetch) keep their records as
--          they are until the settle script's 'start' marks them
-- Returns {next_due, {id, payload, attempt, token, reclaimed, ...}} where
-- next_due is the earliest delayed-message due time or lease deadline ('' if none).
local base = KEYS[1]
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local deadline = tonumber(ARGV[3])
local running = tonumber(ARGV[4] or limit)
local ready = base .. ':ready'
local msg = base .. ':msg'
local delay = base .. ':delay'
local lease = base .. ':lease'
local att = base .. ':att'
local rel = base .. ':rel'
local recl = base .. ':recl'
local exp = base .. ':exp'

-- The head (earliest) of a sorted set: its member's score as Redis wrote it, and
-- as a number; nil when empty.
local function head(key)
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if #first == 0 then
    return nil, nil
  end
  return first[2], tonumber(first[2])
end

-- Most takes (an idle worker's, woken by a send) find none of the structures
-- below: one call says so, instead of a look at each. Script calls cost Redis
-- more than the commands they make, and this one is on every job's way.
local quiet = redis.call('EXISTS', delay, lease, exp, rel, recl) == 0

local delay_at, delay_n, lease_at, lease_n
if not quiet then
  -- Due delayed messages join the tail, in due order.
  delay_at, delay_n = head(delay)
  if delay_n and delay_n <= now then
    local due = redis.call('ZRANGEBYSCORE', delay, '-inf', now, 'LIMIT', 0, 1000)
    redis.call('ZREM', delay, unpack(due))
    redis.call('RPUSH', ready, unpack(due))
    delay_at, delay_n = head(delay)
  end
  -- Expired leases (their worker died or stalled) go to the head: they waited longest.
  lease_at, lease_n = head(lease)
  if lease_n and lease_n <= now then
    local lost = redis.call('ZRANGEBYSCORE', lease, '-inf', now, 'LIMIT', 0, 1000)
    redis.call('ZREM', lease, unpack(lost))
    redis.call('LPUSH', ready, unpack(lost))
    redis.call('SADD', recl, unpack(lost))
    lease_at, lease_n = head(lease)
  end
end

local counts = base .. ':local'
local function uncount(id)
  local owner = string.match(id, '^%.[^!]*!(.+)$')
  if owner and redis.call('HINCRBY', counts, owner, -1) <= 0 then
    redis.call('HDEL', counts, owner)
  end
end

local out = {}
local taken = 0
local emptied = false  -- the ready list was popped empty
local checked = false
local check_exp, check_rel, check_recl
while taken < limit do
  local want = limit - taken
  local ids = redis.call('LPOP', ready, want)
  if not ids then
    emptied = true
    break
  end
  if not checked then
    -- Look-ups that only matter when the structure is non-empty are skipped otherwise.
    if quiet then
      check_exp, check_rel, check_recl = false, false, false
    else
      check_exp = redis.call('ZCARD', exp) > 0
      check_rel = redis.call('HLEN', rel) > 0
      check_recl = redis.call('SCARD', recl) > 0
    end
    checked = true
  end
  for _, id in ipairs(ids) do
    local payload = redis.call('HGET', msg, id)
    local alive = payload ~= false
    if alive and check_exp then
      local expires = redis.call('ZSCORE', exp, id)
      if expires then
        -- A taken plain message is no longer subject to expiry.
        redis.call('ZREM', exp, id)
        if tonumber(expires) <= now then
          redis.call('HDEL', msg, id)
          alive = false
        end
      end
    end
    if payload then
      uncount(id)
    end
    if alive then
      taken = taken + 1
      if deadline == 0 then
        redis.call('HDEL', msg, id)
        redis.call('HDEL', att, id)
        if check_rel then redis.call('HDEL', rel, id) end
        if check_recl then redis.call('SREM', recl, id) end
        out[#out + 1] = {id, payload, 0, 0, 0}
      else
        local token = redis.call('HINCRBY', att, id, 1)
        local attempt = token
        if check_rel then
          local released = redis.call('HGET', rel, id)
          if released then attempt = token - tonumber(released) end
        end
        local reclaimed = 0
        if check_recl then reclaimed = redis.call('SREM', recl, id) end
        redis.call('ZADD', lease, ARGV[3], id)  -- as given: a number would be formatted
        if string.byte(id, 1) ~= 46 and taken <= running then  -- a job: its record says it runs
          redis.call('HSET', base .. ':job:' .. id,
            'status', 'running', 'attempt', attempt, 'started_at', ARGV[1])
        end
        out[#out + 1] = {id, payload, attempt, token, reclaimed}
      end
    end
  end
  if #ids < want then
    emptied = true
    break
  end
end

-- When to look again: the earliest delayed message or lease, ours included.
if deadline > 0 and taken > 0 and (not lease_n or deadline < lease_n) then
  lease_at, lease_n = ARGV[3], deadline
end
local next_due = ''
if delay_n then next_due = delay_at end
if lease_n and (not delay_n or lease_n < delay_n) then next_due = lease_at end
local wake = base .. ':wake'
if emptied or redis.call('LLEN', ready) == 0 then
  -- Nothing is ready: tokens left now would only cause empty wake-ups.
  redis.call('DEL', wake)
elseif redis.call('LLEN', wake) == 0 then
  -- Messages remain and no token says so: wake the next blocked receiver.
  redis.call('RPUSH', wake, '1')
end
return {next_due, out}
