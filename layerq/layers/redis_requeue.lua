-- Send dead letters back to their channel, as new jobs from attempt 1.
--
-- KEYS[1]  base "{prefix:channel}"; touches base..":dead", ":deadinfo", ":deadq",
--          ":msg", ":ready", ":att", ":rel", ":wake", ":job:"..id
-- ARGV[1]  now (epoch seconds)
-- ARGV[2..] ids to requeue; none: the oldest 1000
-- Returns the ids requeued.
local base = KEYS[1]
local dead = base .. ':dead'
local ids
if #ARGV > 1 then
  ids = {unpack(ARGV, 2, #ARGV)}
else
  ids = redis.call('ZRANGE', base .. ':deadq', 0, 999)
end
local done = {}
for _, id in ipairs(ids) do
  local payload = redis.call('HGET', dead, id)
  if payload then
    redis.call('HDEL', dead, id)
    redis.call('HDEL', base .. ':deadinfo', id)
    redis.call('ZREM', base .. ':deadq', id)
    redis.call('HSET', base .. ':msg', id, payload)
    redis.call('RPUSH', base .. ':ready', id)
    -- Deliveries keep counting (they are the lease tokens, which must never
    -- repeat); marking them all released restarts the attempt count at 1.
    local delivered = redis.call('HGET', base .. ':att', id)
    if delivered then
      redis.call('HSET', base .. ':rel', id, delivered)
    end
    local record = base .. ':job:' .. id
    if redis.call('EXISTS', record) == 1 then
      redis.call('HSET', record, 'status', 'queued', 'attempt', 0)
      redis.call('HDEL', record, 'started_at', 'finished_at', 'result', 'error_type',
        'error_message', 'progress', 'progress_message', 'ttl', 'expires_at')
      redis.call('PERSIST', record)
    end
    done[#done + 1] = id
  end
end
if #done > 0 then
  redis.call('RPUSH', base .. ':wake', '1')
end
return done
