-- One queue's /stats/<q> figures: its length, the streaming consumers other brokers serve
-- on it, its leased messages and its dead letters.
-- KEYS: 1 <q>:queue, 2 <q>:leased, 3 QUEUESET, 4 <q>:dead:queue, 5 the brokers index (zset
--       of broker ids; without it, as on a Valkey Cluster where the census has its own
--       slot, consumers are 0)
-- ARGV: 1 consumer counts key prefix, 2 the asking broker's id, 3 the queue's name,
--       4 the dead-letter queue's name (<q>:dead), 5 <q>:delayed
-- Returns: length, consumers (of every broker but the asking one), leased,
--          dead ('' when there is no dead-letter queue), delayed
local consumers = 0
for _, broker in ipairs(KEYS[5] and redis.pcall('ZRANGE', KEYS[5], 0, -1) or {}) do
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
if redis.call('SISMEMBER', KEYS[3], ARGV[4]) == 1 then
  dead = number(redis.pcall('LLEN', KEYS[4]))
end
return {number(redis.pcall('LLEN', KEYS[1])), consumers, number(redis.pcall('ZCARD', KEYS[2])), dead,
        number(redis.pcall('ZCARD', ARGV[5]))}
