-- One queue's length, status, policy, message counter, leases, dead letters and newest
-- pending keys.
-- KEYS: 1 <q>:queue, 2 queuestat::<q>, 3 <q>:queuepolicy, 4 <q>:UUID, 5 <q>:leased,
--       6 QUEUESET, 7 <q>:dead:queue, 8 <q>:delayed
-- ARGV: 1 how many of the newest keys, 2 the dead-letter queue's name (<q>:dead)
-- Returns: length, status ('' unset), policy ('' unset), counter ('' unset), leased,
--          dead ('' when there is no dead-letter queue), delayed, key, key, ...
local dead = ''
if redis.call('SISMEMBER', KEYS[6], ARGV[2]) == 1 then
  dead = redis.call('LLEN', KEYS[7])
end
local out = {
  redis.call('LLEN', KEYS[1]),
  redis.call('GET', KEYS[2]) or '',
  redis.call('GET', KEYS[3]) or '',
  redis.call('GET', KEYS[4]) or '',
  redis.call('ZCARD', KEYS[5]),
  dead,
  redis.call('ZCARD', KEYS[8]),
}
local n = tonumber(ARGV[1])
if n > 0 then
  for _, key in ipairs(redis.call('LRANGE', KEYS[1], 0, n - 1)) do
    out[#out + 1] = key
  end
end
return out
