-- Take up to N of the oldest live messages off a queue and delete their bodies.
-- Leases of the queue that ran out end first (back to the head, or to the dead
-- letters), as for a leased take, and its due delayed messages go to the tail; a queue
-- that never had leases nor delayed messages pays two EXISTS.
-- Keys whose body expired (ttl) or vanished are dropped on the way. The batch
-- stops early once its bodies reach the byte budget (always one message at least),
-- so a batch of large messages cannot swamp the broker.
-- A lease script (lua/lease_lib.lua comes first): ARGV 4 queue, 5 N, 6 byte budget,
-- 7 most overdue leases to end first.
-- Returns a flat list: key, body, peek count (a number), ms to live (-1 none), key, ...
-- The keys are read CHUNK at a time with their bodies by one MGET (read_oldest): one
-- command per message (PTTL) rather than five. Everything is read before the first
-- write (see stop_if_moving), the ending of overdue leases aside: that is whole on its
-- own, as a sweep would do it, and so is the moving of due messages.
local k = queue_keys(ARGV[4])
local wanted, budget = tonumber(ARGV[5]), tonumber(ARGV[6])
local ended, moved = 0, 0
if redis.call('EXISTS', k.leased) == 1 then
  local _, _, n = return_overdue(k, now_ms(), tonumber(ARGV[7]))
  ended = n
end
if redis.call('EXISTS', k.delayed) == 1 then moved = move_due_of(k, now_ms()) end
if ended > 0 or moved > 0 then index_queue(k) end
-- a taken message's lease count goes with it
local counted = redis.call('EXISTS', k.deliveries) == 1
local seen, bodies, peeks = read_oldest(k, wanted, budget)
local out, gone = {}, {}
for i, key in ipairs(seen) do
  if bodies[i] then
    out[#out + 1] = key
    out[#out + 1] = bodies[i]
    out[#out + 1] = tonumber(peeks[i]) or 0
    out[#out + 1] = redis.call('PTTL', key)
  end
  gone[#gone + 1] = key
  if peeks[i] then gone[#gone + 1] = key .. ':refcount' end -- most were never peeked
end
if #seen > 0 then
  redis.call('LTRIM', k.list, 0, -#seen - 1)
  for from = 1, #gone, CHUNK do
    redis.call('DEL', unpack(gone, from, math.min(from + CHUNK - 1, #gone)))
  end
  if counted then
    for from = 1, #seen, CHUNK do
      redis.call('HDEL', k.deliveries, unpack(seen, from, math.min(from + CHUNK - 1, #seen)))
    end
  end
end
return out
