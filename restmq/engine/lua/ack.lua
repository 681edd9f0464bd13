-- Acknowledge leased messages: delete each one whose lease is live and whose delivery
-- count matches its receipt (body, peek counter, lease, delivery count). A late ack or
-- the receipt of an earlier delivery changes nothing. The receipts acked are announced on
-- the queue's channel, so that the leased stream holding them (on any broker) gets more.
-- ARGV: 4 queue, 5 the settled notice word, then key, delivery count for each receipt
-- Returns 1 (acked) or 0 for each receipt, in order.
local k = queue_keys(ARGV[4])
local now = now_ms()
local out, settled = {}, {ARGV[5]}
local acked, gone, done = {}, {}, {}
for i = 6, #ARGV, 2 do
  local key = ARGV[i]
  if not done[key] and holds(k, key, ARGV[i + 1], now) then
    done[key] = true
    acked[#acked + 1] = key
    gone[#gone + 1] = key
    gone[#gone + 1] = key .. ':refcount'
    settled[#settled + 1] = key .. '@' .. ARGV[i + 1]
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
-- a lease not found may be on the other node while the slot moves: stop rather than say 0
if #acked < #out then stop_if_moving(k) end
if #acked > 0 then
  -- All bodies in one DEL, before anything else: while a cluster slot moves Valkey may
  -- refuse it (a key it lacks), stopping the script with nothing written.
  redis.call('DEL', unpack(gone))
  redis.call('ZREM', k.leased, unpack(acked))
  redis.call('HDEL', k.deliveries, unpack(acked))
end
index_queue(k)
if #settled > 1 then
  redis.call(PUBLISH, k.channel, table.concat(settled, ' '))
end
return out
