-- Empty a queue: delete every pending message body and the list of keys.
-- KEYS: 1 <q>:queue
-- ARGV: 1 wake-up channel
-- Returns the number of keys deleted (bodies plus the list itself).
local deleted = 0
local batch = 500
while true do
  local keys = redis.call('LRANGE', KEYS[1], 0, batch - 1)
  if #keys == 0 then break end
  for _, key in ipairs(keys) do
    deleted = deleted + redis.call('DEL', key)
    redis.call('DEL', key .. ':refcount')
  end
  redis.call('LTRIM', KEYS[1], #keys, -1)
end
deleted = deleted + redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[1], 'purge')
return deleted
