-- Extend or release leases, each only if it is live and its delivery count matches
-- its receipt. A lease of S > 0 ms now ends S ms from now; 0 releases the message at
-- once: back to the head of the queue (the first receipt next to be taken), or to the
-- dead letters when it was handed out max_deliveries times.
-- Released receipts are announced on the queue's channel like acked ones (ack.lua).
-- ARGV: 4 queue, 5 new lease in ms (0: release), 6 1 if a released delivery counts,
--       0 if it never reached anyone, 7 the settled notice word, then key, delivery
--       count for each receipt
-- Returns 1 (done) or 0 for each receipt, in order.
local k = queue_keys(ARGV[4])
local lease, counted = tonumber(ARGV[5]), ARGV[6] == '1'
local now = now_ms()
local out, released, settled = {}, {}, {ARGV[7]}
local held = {}
for i = 8, #ARGV, 2 do
  held[#held + 1] = holds(k, ARGV[i], ARGV[i + 1], now)
end
-- a lease not found may be on the other node while the slot moves: stop rather than say 0
for _, yes in ipairs(held) do
  if not yes then stop_if_moving(k) break end
end
for i = 8, #ARGV, 2 do
  local key = ARGV[i]
  if held[(i - 6) / 2] then
    if lease > 0 then
      redis.call('ZADD', k.leased, 'XX', now + lease, key)
    else
      released[#released + 1] = key
      settled[#settled + 1] = key .. '@' .. ARGV[i + 1]
    end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
if #released > 0 then
  end_leases(k, released, counted)
  redis.call(PUBLISH, k.channel, table.concat(settled, ' '))
end
index_queue(k)
return out
