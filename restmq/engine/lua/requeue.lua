-- Put messages that no consumer could take back at the head of their queue, in
-- their order, with what was left of their ttl, and wake the queue's consumers.
-- KEYS: 1 <q>:queue
-- ARGV: 1 wake-up channel, 2 notice word (restmq.engine.notices.ADD), then key, body,
--       ms to live (-1 none) for each message, oldest first
for i = #ARGV - 2, 3, -3 do
  local key, body, ttl = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  if ttl and ttl > 0 then
    redis.call('SET', key, body, 'PX', ttl)
  else
    redis.call('SET', key, body)
  end
  redis.call('RPUSH', KEYS[1], key)
end
redis.call(PUBLISH, ARGV[1], ARGV[2])
return (#ARGV - 2) / 3
