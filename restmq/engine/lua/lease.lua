-- Take up to N of the oldest live messages of a queue under a lease. First the queue's
-- overdue leases end (back to the head, or to the dead letters), so that a lease runs
-- out even when no broker is sweeping. A leased message keeps its body until acked.
-- Keys whose body expired are dropped on the way (lease_next); the batch stops once
-- its bodies reach the byte budget (one message at least).
-- ARGV: 4 queue, 5 lease in ms, 6 N, 7 byte budget, 8 most overdue leases to end first
-- Returns a flat list: deadline (ms), how many overdue leases went back and how many
-- died, then key, body, peek count, ms to live (-1 none), deliveries, for each message taken.
local k = queue_keys(ARGV[4])
local lease, wanted, budget = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local now = now_ms()
local back, dead = return_overdue(k, now, tonumber(ARGV[8]))
local deadline = now + lease
local out = {deadline, back, dead}
local taken, bytes = 0, 0
while taken < wanted and (taken == 0 or bytes < budget) do
  local key, body, deliveries = lease_next(k, deadline)
  if not key then break end
  out[#out + 1] = key
  out[#out + 1] = body
  out[#out + 1] = redis.call('GET', key .. ':refcount') or '0'
  out[#out + 1] = redis.call('PTTL', key)
  out[#out + 1] = deliveries
  taken = taken + 1
  bytes = bytes + #body
end
index_queue(k)
return out
