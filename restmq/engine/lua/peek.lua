-- Look at the oldest live message without taking it, and count the look.
-- Expired heads are removed on the way, as a pop would; due delayed messages go to the
-- tail first, as for every take (lua/due_lib.lua comes first).
-- KEYS: 1 <q>:queue, 2 <q>:delayed, 3 <q>:leased, 4 the timer index (the leasing index)
-- ARGV: 1 wake-up channel, 2 notice word (restmq.engine.notices.ADD), 3 the queue's stem
-- Returns key, body, peek count; or an empty list when the queue is empty.
if redis.call('EXISTS', KEYS[2]) == 1
    and move_due(KEYS[1], KEYS[2], ARGV[1], ARGV[2], due_clock_ms(), DUE_LIMIT) > 0 then
  place_in_index(KEYS[4], ARGV[3], KEYS[3], KEYS[2])
end
while true do
  local key = redis.call('LINDEX', KEYS[1], -1)
  if not key then return {} end
  -- body and peek counter read together: while a cluster slot moves, Valkey refuses the
  -- read unless both are on this node, before anything is written
  local body = redis.call('MGET', key, key .. ':refcount')[1]
  if body then
    local peeks = redis.call('INCR', key .. ':refcount')
    return {key, body, peeks}
  end
  redis.call('RPOP', KEYS[1])
  redis.call('DEL', key .. ':refcount')
end
