-- Take up to N of the oldest live messages off a queue and delete their bodies.
-- Leases of the queue that ran out end first (back to the head, or to the dead
-- letters), as for a leased take; a queue that never had leases pays one EXISTS.
-- Keys whose body expired (ttl) or vanished are dropped on the way. The batch
-- stops early once its bodies reach the byte budget (always one message at least),
-- so a batch of large messages cannot swamp the broker.
-- A lease script (lua/lease_lib.lua comes first): ARGV 4 queue, 5 N, 6 byte budget,
-- 7 most overdue leases to end first.
-- Returns a flat list: key, body, peek count, ms to live (-1 none), key, body, ...
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
  local key = redis.call('RPOP', list)
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
  if counted then redis.call('HDEL', deliveries, key) end
end
return out
