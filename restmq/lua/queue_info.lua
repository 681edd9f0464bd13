-- One queue's length, status, policy, message counter and newest pending keys.
-- KEYS: 1 <q>:queue, 2 queuestat::<q>, 3 <q>:queuepolicy, 4 <q>:UUID
-- ARGV: 1 how many of the newest keys
-- Returns: length, status ('' unset), policy ('' unset), counter ('' unset), key, key, ...
local out = {
  redis.call('LLEN', KEYS[1]),
  redis.call('GET', KEYS[2]) or '',
  redis.call('GET', KEYS[3]) or '',
  redis.call('GET', KEYS[4]) or '',
}
local n = tonumber(ARGV[1])
if n > 0 then
  for _, key in ipairs(redis.call('LRANGE', KEYS[1], 0, n - 1)) do
    out[#out + 1] = key
  end
end
return out
