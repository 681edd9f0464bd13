-- Lease a batch of live messages for one leased streaming consumer (COMET, SSE,
-- WebSocket). Like lease.lua (the queue's overdue leases end first and its due delayed
-- messages go to the tail, bodies stay until acked), but nothing is taken from a stopped queue, and under the broadcast policy the
-- batch is also published, so that the unleased consumers of every broker get it too.
-- Own ARGV, counted from the end so that they stay put whatever the common arguments
-- of lease_lib.lua are: queue, lease in ms, N, byte budget, most overdue leases to end
-- first, id of the taking broker, batch version, the batch's field names for version,
-- origin and messages (restmq.engine.notices).
-- Returns: started (1/0), policy ('1' broadcast, '2' roundrobin), number of brokers the
-- batch was published to, keys left in the queue, deadline (ms), then key, body, ms to
-- live (-1 none), deliveries, for each message taken.
local last = #ARGV
local k = queue_keys(ARGV[last - 9])
local lease, wanted, budget = tonumber(ARGV[last - 8]), tonumber(ARGV[last - 7]),
                              tonumber(ARGV[last - 6])
local policy = redis.call('GET', k.name .. ':queuepolicy')
if policy ~= '2' then policy = '1' end
if redis.call('GET', ARGV[1] .. k.name) == '0' then
  return {0, policy, 0, 0, 0}
end
local now = now_ms()
return_overdue(k, now, tonumber(ARGV[last - 5]))
move_due_of(k, now)
local deadline = now + lease
local out = {1, policy, 0, 0, deadline}
local published = {}
-- read before the leases are written: the list may go with its last key
local length = redis.call('LLEN', k.list)
local taken, consumed = lease_oldest(k, deadline, wanted, budget)
for _, message in ipairs(taken) do
  out[#out + 1] = message[1]
  out[#out + 1] = message[2]
  out[#out + 1] = message[4]
  out[#out + 1] = message[5]
  published[#published + 1] = message[1]
  published[#published + 1] = message[2]
end
index_queue(k)
if policy == '1' and #taken > 0 then
  local batch = {}
  batch[ARGV[last - 2]] = tonumber(ARGV[last - 3])
  batch[ARGV[last - 1]] = ARGV[last - 4]
  batch[ARGV[last]] = published
  out[3] = redis.call(PUBLISH, k.channel, cjson.encode(batch))
end
out[4] = length - consumed
return out
