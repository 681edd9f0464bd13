-- Delete one message by key: its body, its peek counter, its place in the queue, and
-- its lease and lease count if it has them.
-- KEYS: 1 <q>:queue, 2 the message key, 3 <q>:leased, 4 <q>:deliveries
-- Returns 1 when the message existed, else 0.
local existed = redis.call('EXISTS', KEYS[2])
-- body and peek counter in one DEL, the first write: while a cluster slot moves, Valkey
-- refuses it unless both are on this node, and the script stops having changed nothing
redis.call('DEL', KEYS[2], KEYS[2] .. ':refcount')
local listed = redis.call('LREM', KEYS[1], 0, KEYS[2])
redis.call('ZREM', KEYS[3], KEYS[2])
redis.call('HDEL', KEYS[4], KEYS[2])
if existed > 0 or listed > 0 then return 1 end
return 0
