-- Look at the oldest live message without taking it, and count the look.
-- Expired heads are removed on the way, as a pop would.
-- KEYS: 1 <q>:queue
-- Returns key, body, peek count; or an empty list when the queue is empty.
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
