-- Take up to N of the oldest live messages off a queue and delete their bodies.
-- Keys whose body expired (ttl) or vanished are dropped on the way. The batch
-- stops early once its bodies reach the byte budget (always one message at least),
-- so a batch of large messages cannot swamp the broker.
-- KEYS: 1 <q>:queue, 2 <q>:deliveries (a taken message's lease count goes with it)
-- ARGV: 1 N, 2 byte budget
-- Returns a flat list: key, body, peek count, ms to live (-1 none), key, body, ...
local wanted, budget = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
local taken, bytes = 0, 0
local counted = redis.call('EXISTS', KEYS[2]) == 1
while taken < wanted and (taken == 0 or bytes < budget) do
  local key = redis.call('RPOP', KEYS[1])
  if not key then break end
  local body = redis.call('GET', key)
  local peeks = redis.call('GET', key .. ':refcount') or '0'
  if body then
    out[#out + 1] = key
    out[#out + 1] = body
    out[#out + 1] = peeks
    out[#out + 1] = redis.call('PTTL', key)
    taken = taken + 1
    bytes = bytes + #body
  end
  redis.call('DEL', key, key .. ':refcount')
  if counted then redis.call('HDEL', KEYS[2], key) end
end
return out
