-- Mark a job record watched for a waiter, who pipelines behind this call
--   BLMOVE done done RIGHT LEFT <seconds>   (returns when the job ends)
--   HGETALL record                          (the record as it is then)
-- so a whole wait is one round trip.
--
-- KEYS[1]  the job record ("{prefix:channel}:job:<id>")
-- KEYS[2]  its done list ("{prefix:channel}:done:<id>"), where redis_settle.lua and
--          redis_cancel.lua push a token when a watched job ends; waiters rotate
--          it (BLMOVE onto the same list), so every one of them wakes
-- KEYS[3]  the channel's messages ("{prefix:channel}:msg"): a job still waiting has
--          no record hash yet, only its message (redis_enqueue.lua)
-- ARGV[1]  the job id
-- Returns nothing: the HGETALL behind it is the answer.
--
-- Reading and marking are one step, so a job cannot end between them unseen:
-- either this read sees it over, or its end sees the mark and pushes.
local status = redis.call('HGET', KEYS[1], 'status')
if not status and redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then
  status = 'queued'
end
if status and status ~= 'succeeded' and status ~= 'failed' and status ~= 'cancelled' then
  redis.call('HSET', KEYS[1], 'watch', '1')
  -- The job is not over, so a token still here is from an earlier end (a
  -- requeued dead letter): it would wake waiters for an outcome since undone.
  redis.call('DEL', KEYS[2])
  return
end
-- Over, or no such job: a token lets the BLMOVE behind return at once.
if redis.call('LLEN', KEYS[2]) == 0 then
  redis.call('RPUSH', KEYS[2], '1')
  redis.call('PEXPIRE', KEYS[2], 10000)
end
