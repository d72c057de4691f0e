-- Store a running job's progress, only if its record exists.
--
-- KEYS[1]  the job record ("{prefix:channel}:job:<id>")
-- ARGV[1]  progress (0.0 .. 1.0)
-- ARGV[2]  '1' when ARGV[3] carries a message, '0' to clear it
-- ARGV[3]  progress message
-- Returns 1 stored, 0 no such record.
local record = KEYS[1]
if redis.call('EXISTS', record) == 0 then
  return 0
end
redis.call('HSET', record, 'progress', ARGV[1])
if ARGV[2] == '1' then
  redis.call('HSET', record, 'progress_message', ARGV[3])
else
  redis.call('HDEL', record, 'progress_message')
end
return 1
