-- Empty a queue: delete every pending message (body and peek counter) and the list of keys,
-- every leased message with its lease and delivery count, and every delayed message.
-- KEYS: 1 <q>:queue, 2 <q>:leased, 3 <q>:deliveries, 4 the leasing index, 5 <q>:delayed
-- ARGV: 1 wake-up channel, 2 queue name, 3 notice word (restmq.engine.notices.PURGE)
-- Returns the number of messages deleted (pending entries of the list, expired ones too,
-- leased and delayed messages).
local removed = 0
local batch = 500
-- While a cluster slot moves, Valkey refuses a script's access to the message keys it
-- lacks, stopping it where it is: a purge refuses at once then (two keys that never
-- exist, read together), before it deletes anything; elsewhere this EXISTS answers 0.
redis.call('EXISTS', KEYS[1] .. ':moving?1', KEYS[1] .. ':moving?2')
-- Delete the messages (body and peek counter) of `keys`; how many there were.
local function delete_messages(keys)
  local doomed = {}
  for _, key in ipairs(keys) do
    doomed[#doomed + 1] = key
    doomed[#doomed + 1] = key .. ':refcount'
  end
  redis.call('DEL', unpack(doomed))
  return #keys
end
while true do
  local keys = redis.call('LRANGE', KEYS[1], 0, batch - 1)
  if #keys == 0 then break end
  removed = removed + delete_messages(keys)
  redis.call('LTRIM', KEYS[1], #keys, -1)
end
for _, zset in ipairs({KEYS[2], KEYS[5]}) do
  while true do
    local keys = redis.call('ZRANGE', zset, 0, batch - 1)
    if #keys == 0 then break end
    removed = removed + delete_messages(keys)
    redis.call('ZREMRANGEBYRANK', zset, 0, #keys - 1)
  end
end
redis.call('DEL', KEYS[3])
redis.call('ZREM', KEYS[4], ARGV[2])
redis.call(PUBLISH, ARGV[1], ARGV[3])
return removed
