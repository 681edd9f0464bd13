-- Take up to N of the oldest live messages off a queue and delete their bodies.
-- Keys whose body expired (ttl) or vanished are dropped on the way. The batch
-- stops early once its bodies reach the byte budget (always one message at least),
-- so a batch of large messages cannot swamp the broker.
-- KEYS: 1 <q>:queue, 2 <q>:deliveries (a taken message's lease count goes with it)
-- ARGV: 1 N, 2 byte budget
-- Returns a flat list: key, body, peek count (a number), ms to live (-1 none), key, ...
-- A batch takes its keys CHUNK at a time and reads their bodies with one MGET: one
-- command per message (PTTL) rather than five.
local CHUNK = 1000
local wanted, budget = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
local taken, bytes = 0, 0
local counted = redis.call('EXISTS', KEYS[2]) == 1
while taken < wanted and (taken == 0 or bytes < budget) do
  local n = math.min(wanted - taken, CHUNK)
  local keys
  if n == 1 then
    local key = redis.call('RPOP', KEYS[1])
    keys = key and {key} or {}
  else
    keys = redis.call('LRANGE', KEYS[1], -n, -1) -- newest first: the oldest is last
    redis.call('LTRIM', KEYS[1], 0, -n - 1)
  end
  if #keys == 0 then break end
  local refcounts = {}
  for i, key in ipairs(keys) do refcounts[i] = key .. ':refcount' end
  local bodies = redis.call('MGET', unpack(keys))
  local peeks = redis.call('MGET', unpack(refcounts))
  local gone = {}
  local i = #keys
  while i >= 1 and taken < wanted and (taken == 0 or bytes < budget) do
    local key, body = keys[i], bodies[i]
    if body then
      out[#out + 1] = key
      out[#out + 1] = body
      out[#out + 1] = tonumber(peeks[i]) or 0
      out[#out + 1] = redis.call('PTTL', key)
      taken = taken + 1
      bytes = bytes + #body
    end
    gone[#gone + 1] = key
    if peeks[i] then gone[#gone + 1] = refcounts[i] end -- most messages were never peeked
    i = i - 1
  end
  if i >= 1 then
    -- the byte budget ended the batch: the keys not looked at go back, oldest at the tail
    redis.call('RPUSH', KEYS[1], unpack(keys, 1, i))
  end
  redis.call('DEL', unpack(gone))
  if counted then
    redis.call('HDEL', KEYS[2], unpack(keys, i + 1, #keys))
  end
end
return out
