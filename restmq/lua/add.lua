-- Add one or more messages to a queue, atomically.
-- KEYS: 1 QUEUESET, 2 <q>:UUID, 3 <q>:queue, 4 queuestat::<q>
-- ARGV: 1 queue name, 2 ttl in seconds (0: none), 3 wake-up channel, 4 notice word
--       (restmq.notices.ADD), 5.. message bodies
-- Returns the new message keys, oldest first.
local queue, ttl, channel, notice = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local first = 5
local count = #ARGV - first + 1
local last = redis.call('INCRBY', KEYS[2], count)
local keys = {}
for i = 1, count do
  local key = queue .. ':' .. (last - count + i)
  if ttl > 0 then
    redis.call('SET', key, ARGV[first - 1 + i], 'EX', ttl)
  else
    redis.call('SET', key, ARGV[first - 1 + i])
  end
  redis.call('LPUSH', KEYS[3], key)
  keys[i] = key
end
if redis.call('SADD', KEYS[1], queue) == 1 then
  redis.call('SET', KEYS[4], '1', 'NX')
end
redis.call('PUBLISH', channel, notice)
return keys
