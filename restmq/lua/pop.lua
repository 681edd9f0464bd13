-- Take up to N of the oldest live messages off a queue and delete their bodies.
-- Keys whose body expired (ttl) or vanished are dropped on the way.
-- KEYS: 1 <q>:queue
-- ARGV: 1 N
-- Returns a flat list: key, body, peek count, key, body, peek count, ...
local wanted = tonumber(ARGV[1])
local out = {}
local taken = 0
while taken < wanted do
  local key = redis.call('RPOP', KEYS[1])
  if not key then break end
  local body = redis.call('GET', key)
  local peeks = redis.call('GET', key .. ':refcount') or '0'
  redis.call('DEL', key, key .. ':refcount')
  if body then
    out[#out + 1] = key
    out[#out + 1] = body
    out[#out + 1] = peeks
    taken = taken + 1
  end
end
return out
