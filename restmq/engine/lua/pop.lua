-- Take up to N of the oldest live messages off a queue and delete their bodies.
-- Leases of the queue that ran out end first (back to the head, or to the dead
-- letters), as for a leased take; a queue that never had leases pays one EXISTS.
-- Keys whose body expired (ttl) or vanished are dropped on the way. The batch
-- stops early once its bodies reach the byte budget (always one message at least),
-- so a batch of large messages cannot swamp the broker.
-- A lease script (lua/lease_lib.lua comes first): ARGV 4 queue, 5 N, 6 byte budget,
-- 7 most overdue leases to end first.
-- Returns a flat list: key, body, peek count (a number), ms to live (-1 none), key, ...
-- A batch takes its keys CHUNK at a time and reads their bodies with one MGET: one
-- command per message (PTTL) rather than five.
local CHUNK = 1000
local queue = ARGV[4]
local list, deliveries = queue .. ':queue', queue .. ':deliveries'
local wanted, budget = tonumber(ARGV[5]), tonumber(ARGV[6])
if redis.call('EXISTS', queue .. ':leased') == 1 then
  local k = queue_keys(queue)
  local _, _, ended = return_overdue(k, now_ms(), tonumber(ARGV[7]))
  if ended > 0 then index_queue(k) end
end
local out = {}
local taken, bytes = 0, 0
-- a taken message's lease count goes with it
local counted = redis.call('EXISTS', deliveries) == 1
while taken < wanted and (taken == 0 or bytes < budget) do
  local n = math.min(wanted - taken, CHUNK)
  local keys = redis.call('LRANGE', list, -n, -1) -- newest first: the oldest is last
  if #keys == 0 then break end
  local refcounts = {}
  for i, key in ipairs(keys) do refcounts[i] = key .. ':refcount' end
  local bodies = redis.call('MGET', unpack(keys))
  local peeks = redis.call('MGET', unpack(refcounts))
  -- Read first, then take the keys off the list: while a cluster slot migrates, Valkey
  -- refuses a script's read of keys it lacks (the refcounts), and the script stops there;
  -- what it wrote before that would stay, messages taken off the list and lost.
  redis.call('LTRIM', list, 0, -n - 1)
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
    redis.call('RPUSH', list, unpack(keys, 1, i))
  end
  redis.call('DEL', unpack(gone))
  if counted then
    redis.call('HDEL', deliveries, unpack(keys, i + 1, #keys))
  end
end
return out
