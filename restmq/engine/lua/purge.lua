-- Empty a queue: delete every pending message (body and peek counter) and the list of keys,
-- and every leased message with its lease and delivery count.
-- KEYS: 1 <q>:queue, 2 <q>:leased, 3 <q>:deliveries, 4 the leasing index
-- ARGV: 1 wake-up channel, 2 queue name, 3 notice word (restmq.engine.notices.PURGE)
-- Returns the number of messages deleted (pending entries of the list, expired ones too,
-- and leased messages).
local removed = 0
local batch = 500
-- Delete the messages (body and peek counter) of `keys`; how many there were.
local function delete_messages(keys)
  for _, key in ipairs(keys) do
    redis.call('DEL', key, key .. ':refcount')
  end
  return #keys
end
while true do
  local keys = redis.call('LRANGE', KEYS[1], 0, batch - 1)
  if #keys == 0 then break end
  removed = removed + delete_messages(keys)
  redis.call('LTRIM', KEYS[1], #keys, -1)
end
while true do
  local keys = redis.call('ZRANGE', KEYS[2], 0, batch - 1)
  if #keys == 0 then break end
  removed = removed + delete_messages(keys)
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, #keys - 1)
end
redis.call('DEL', KEYS[3])
redis.call('ZREM', KEYS[4], ARGV[2])
redis.call(PUBLISH, ARGV[1], ARGV[3])
return removed
