-- Say which brokers have leased streaming consumers of some queues. Under broadcast,
-- take_for_streams takes nothing while a queue has one (its leased consumers take, and
-- their batches are published to everyone), so that each message reaches a leased one.
-- KEYS: the queues' <q>:leasedstreams sorted sets (broker id -> until, ms by Redis TIME)
-- ARGV: 1 broker id, 2 ms the entry lasts (0: withdraw it), 3 the add notice word,
--       then the queues' channels, one per key
-- A withdrawal that leaves a queue without leased streams publishes the add word on its
-- channel, so that the unleased consumers of every broker take the backlog at once.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if ttl > 0 then
    redis.call('ZADD', key, now + ttl, ARGV[1])
    redis.call('PEXPIRE', key, ttl)
  elseif redis.call('ZREM', key, ARGV[1]) == 1 and redis.call('EXISTS', key) == 0 then
    redis.call(PUBLISH, ARGV[3 + i], ARGV[3])
  end
end
return #KEYS
