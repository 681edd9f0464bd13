-- Add one or more messages to a queue, atomically.
-- KEYS: 1 QUEUESET, 2 <q>:UUID, 3 <q>:queue, 4 queuestat::<q>
-- ARGV: 1 queue name, 2 ttl in seconds (0: none), 3 wake-up channel, 4 notice word
--       (restmq.engine.notices.ADD), 5.. message bodies
-- Returns the new message keys, oldest first.
-- Bodies without a ttl are stored by one MSET and the keys queued by one LPUSH, CHUNK
-- at a time (unpack has a limit): a batch costs a few commands, not two per message.
local CHUNK = 1000
local queue, ttl, channel, notice = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local first = 5
local count = #ARGV - first + 1
-- The new keys are touched before anything is written: while a cluster slot moves,
-- Valkey may refuse a script's access to them (keys it lacks), stopping the script.
local last = (tonumber(redis.call('GET', KEYS[2]) or '0') or 0) + count
local keys = {}
for i = 1, count do
  keys[i] = queue .. ':' .. (last - count + i)
end
for from = 1, count, CHUNK do
  redis.call('EXISTS', unpack(keys, from, math.min(from + CHUNK - 1, count)))
end
redis.call('INCRBY', KEYS[2], count)
for from = 1, count, CHUNK do
  local to = math.min(from + CHUNK - 1, count)
  if ttl > 0 then
    for i = from, to do
      redis.call('SET', keys[i], ARGV[first - 1 + i], 'EX', ttl)
    end
  else
    local pairs = {}
    for i = from, to do
      pairs[#pairs + 1] = keys[i]
      pairs[#pairs + 1] = ARGV[first - 1 + i]
    end
    redis.call('MSET', unpack(pairs))
  end
  redis.call('LPUSH', KEYS[3], unpack(keys, from, to))
end
if redis.call('SADD', KEYS[1], queue) == 1 then
  redis.call('SET', KEYS[4], '1', 'NX')
end
redis.call(PUBLISH, channel, notice)
return keys
