-- Record one broker's streaming consumer counts, for a while, and forget expired brokers.
-- KEYS: 1 the brokers index (zset: broker id -> expiry, ms), 2 this broker's counts (hash)
-- ARGV: 1 broker id, 2 lifetime (ms), 3 'refresh' (only keep the counts alive) or
--       'set', then queue, count pairs (none: this broker has no consumers now)
-- Returns 1, or 0 when a refresh found the counts gone (expired): write them in full.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lifetime = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[3] == 'refresh' then
  if redis.call('PEXPIRE', KEYS[2], lifetime) == 0 then
    redis.call('ZREM', KEYS[1], ARGV[1])
    return 0
  end
else
  redis.call('DEL', KEYS[2])
  if #ARGV < 5 then
    redis.call('ZREM', KEYS[1], ARGV[1])
    return 1
  end
  for i = 4, #ARGV, 1000 do
    redis.call('HSET', KEYS[2], unpack(ARGV, i, math.min(i + 999, #ARGV)))
  end
  redis.call('PEXPIRE', KEYS[2], lifetime)
end
redis.call('ZADD', KEYS[1], now + lifetime, ARGV[1])
-- The index lasts as long as the last of its brokers' counts.
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], tonumber(last[2]))
return 1
