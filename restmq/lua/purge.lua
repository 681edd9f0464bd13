-- Empty a queue: delete every pending message (body and peek counter) and the list of keys.
-- KEYS: 1 <q>:queue
-- ARGV: 1 wake-up channel, 2 notice word (restmq.notices.PURGE)
-- Returns the number of messages that were pending (entries of the list, expired ones too).
local removed = 0
local batch = 500
while true do
  local keys = redis.call('LRANGE', KEYS[1], 0, batch - 1)
  if #keys == 0 then break end
  for _, key in ipairs(keys) do
    redis.call('DEL', key, key .. ':refcount')
  end
  removed = removed + #keys
  redis.call('LTRIM', KEYS[1], #keys, -1)
end
redis.call('PUBLISH', ARGV[1], ARGV[2])
return removed
