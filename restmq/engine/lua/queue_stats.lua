-- One queue's /stats/<q> figures: its length, the streaming consumers other brokers serve
-- on it, its leased messages and its dead letters.
-- KEYS: 1 <q>:queue, 2 the brokers index (zset of broker ids), 3 <q>:leased, 4 QUEUESET,
--       5 <q>:dead:queue
-- ARGV: 1 consumer counts key prefix, 2 the asking broker's id, 3 the queue's name,
--       4 the dead-letter queue's name (<q>:dead)
-- Returns: length, consumers (of every broker but the asking one), leased,
--          dead ('' when there is no dead-letter queue)
local consumers = 0
for _, broker in ipairs(redis.pcall('ZRANGE', KEYS[2], 0, -1)) do
  if broker ~= ARGV[2] then
    local count = redis.pcall('HGET', ARGV[1] .. broker, ARGV[3])
    if type(count) == 'string' then
      consumers = consumers + (tonumber(count) or 0)
    end
  end
end
local function number(reply)
  return type(reply) == 'number' and reply or 0
end
local dead = ''
if redis.call('SISMEMBER', KEYS[4], ARGV[4]) == 1 then
  dead = number(redis.pcall('LLEN', KEYS[5]))
end
return {number(redis.pcall('LLEN', KEYS[1])), consumers, number(redis.pcall('ZCARD', KEYS[3])), dead}
