-- Take up to N of the oldest live messages of a queue under a lease. First the queue's
-- overdue leases end (back to the head, or to the dead letters), so that a lease runs
-- out even when no broker is sweeping, and its due delayed messages go to the tail. A leased message keeps its body until acked.
-- Keys whose body expired are dropped on the way (lease_oldest); the batch stops once
-- its bodies reach the byte budget (one message at least).
-- ARGV: 4 queue, 5 lease in ms, 6 N, 7 byte budget, 8 most overdue leases to end first
-- Returns a flat list: deadline (ms), how many overdue leases went back and how many
-- died, then key, body, peek count, ms to live (-1 none), deliveries, for each message taken.
local k = queue_keys(ARGV[4])
local lease, wanted, budget = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local now = now_ms()
local back, dead = return_overdue(k, now, tonumber(ARGV[8]))
move_due_of(k, now)
local deadline = now + lease
local out = {deadline, back, dead}
for _, message in ipairs(lease_oldest(k, deadline, wanted, budget)) do
  out[#out + 1] = message[1]
  out[#out + 1] = message[2]
  out[#out + 1] = message[3]
  out[#out + 1] = message[4]
  out[#out + 1] = message[5]
end
index_queue(k)
return out
