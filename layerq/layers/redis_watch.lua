-- Read a job record for a waiter; unless it is terminal, ask to be told when it is.
--
-- KEYS[1]  the job record ("{prefix:channel}:job:<id>")
-- KEYS[2]  its done list ("{prefix:channel}:done:<id>"), where redis_settle.lua and
--          redis_cancel.lua push the final record (length-prefixed pairs) when a
--          watched job ends
-- Returns the record's field/value pairs (HGETALL; empty when there is none).
--
-- Reading and marking are one step, so a job cannot end between them unseen:
-- either this read sees it terminal, or its end sees the mark and pushes.
local raw = redis.call('HGETALL', KEYS[1])
if #raw == 0 then
  return raw
end
local status
for i = 1, #raw, 2 do
  if raw[i] == 'status' then
    status = raw[i + 1]
    break
  end
end
if status ~= 'succeeded' and status ~= 'failed' and status ~= 'cancelled' then
  redis.call('HSET', KEYS[1], 'watch', '1')
  -- The job is not over, so a record still here is from an earlier end (a
  -- requeued dead letter): it would hand waiters an outcome since undone.
  redis.call('DEL', KEYS[2])
end
return raw
