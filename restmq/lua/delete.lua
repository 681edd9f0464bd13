-- Delete one message by key: its body, its peek counter and its place in the queue.
-- KEYS: 1 <q>:queue, 2 the message key
-- Returns 1 when the message existed, else 0.
local existed = redis.call('DEL', KEYS[2])
redis.call('DEL', KEYS[2] .. ':refcount')
local listed = redis.call('LREM', KEYS[1], 0, KEYS[2])
if existed > 0 or listed > 0 then return 1 end
return 0
