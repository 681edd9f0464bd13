-- One queue's length and the streaming consumers other brokers serve on it.
-- KEYS: 1 <q>:queue, 2 the brokers index (zset of broker ids)
-- ARGV: 1 consumer counts key prefix, 2 the asking broker's id, 3 the queue's name
-- Returns: length, consumers (of every broker but the asking one)
local consumers = 0
for _, broker in ipairs(redis.pcall('ZRANGE', KEYS[2], 0, -1)) do
  if broker ~= ARGV[2] then
    local count = redis.pcall('HGET', ARGV[1] .. broker, ARGV[3])
    if type(count) == 'string' then
      consumers = consumers + (tonumber(count) or 0)
    end
  end
end
local length = redis.pcall('LLEN', KEYS[1])
return {type(length) == 'number' and length or 0, consumers}
