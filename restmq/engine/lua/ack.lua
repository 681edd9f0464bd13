-- Acknowledge leased messages: delete each one whose lease is live and whose delivery
-- count matches its receipt (body, peek counter, lease, delivery count). A late ack or
-- the receipt of an earlier delivery changes nothing. The receipts acked are announced on
-- the queue's channel, so that the leased stream holding them (on any broker) gets more.
-- ARGV: 4 queue, 5 the settled notice word, then key, delivery count for each receipt
-- Returns 1 (acked) or 0 for each receipt, in order.
local k = queue_keys(ARGV[4])
local now = now_ms()
local out, settled = {}, {ARGV[5]}
for i = 6, #ARGV, 2 do
  local key = ARGV[i]
  if holds(k, key, ARGV[i + 1], now) then
    -- the body first: while a cluster slot migrates Valkey may refuse this DEL (a key it
    -- lacks), stopping the script; the lease must not be gone then, the body left behind
    redis.call('DEL', key, key .. ':refcount')
    redis.call('ZREM', k.leased, key)
    redis.call('HDEL', k.deliveries, key)
    settled[#settled + 1] = key .. '@' .. ARGV[i + 1]
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
index_queue(k)
if #settled > 1 then
  redis.call(PUBLISH, k.channel, table.concat(settled, ' '))
end
return out
