-- Take a batch of live messages for this broker's streaming consumers.
-- Nothing is taken from a stopped queue. Under the broadcast policy the batch is
-- also published, so that every other broker sharing this Redis hands it to its
-- own consumers; roundrobin batches go to this broker's consumers only.
-- Under broadcast nothing is taken while some broker has leased streams of the queue
-- (stream_leasers.lua): theirs are the takes, published for every unleased consumer.
-- The queue's due delayed messages go to its tail first (lua/due_lib.lua comes first).
-- KEYS: 1 <q>:queue, 2 queuestat::<q>, 3 <q>:queuepolicy, 4 <q>:deliveries (a taken
--       message's lease count goes with it), 5 <q>:leasedstreams, 6 <q>:delayed,
--       7 <q>:leased, 8 the timer index (the leasing index)
-- ARGV: 1 batch size under roundrobin, 2 batch size under broadcast,
--       3 wake-up channel, 4 id of the taking broker, 5 byte budget (the batch
--       stops once its bodies reach it; one message at least), 6 batch version,
--       7-9 the batch's field names for version, origin and messages
--       (restmq.engine.notices: the published batch is
--       {"v": 1, "o": origin, "m": [key, body, ...]}), 10 the notice word for due
--       messages moved (restmq.engine.notices.ADD), 11 the queue's stem
-- Returns: started (1/0), policy ('1' broadcast, '2' roundrobin), number of brokers
--          the batch was published to, keys left in the queue, then key, body,
--          ms to live (-1 none), ...
local policy = redis.call('GET', KEYS[3])
if policy ~= '2' then policy = '1' end
if redis.call('GET', KEYS[2]) == '0' then
  return {0, policy, 0, 0}
end
if redis.call('EXISTS', KEYS[6]) == 1
    and move_due(KEYS[1], KEYS[6], ARGV[3], ARGV[10], due_clock_ms(), DUE_LIMIT) > 0 then
  place_in_index(KEYS[8], ARGV[11], KEYS[7], KEYS[6])
end
local wanted = tonumber(policy == '2' and ARGV[1] or ARGV[2])
if policy == '1' and redis.call('EXISTS', KEYS[5]) == 1 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if redis.call('ZCOUNT', KEYS[5], '(' .. now, '+inf') > 0 then wanted = 0 end
end
local out = {1, policy, 0, 0}
local published = {}
local taken, bytes, budget = 0, 0, tonumber(ARGV[5])
local counted = redis.call('EXISTS', KEYS[4]) == 1
-- Everything is read before the first write: while a cluster slot moves, Valkey refuses
-- a script's access to a message key it lacks and the script stops where it is.
local length = redis.call('LLEN', KEYS[1])
local seen, gone = {}, {}
while taken < wanted and (taken == 0 or bytes < budget) do
  local n = wanted - taken
  local keys = redis.call('LRANGE', KEYS[1], -#seen - n, -#seen - 1) -- the oldest is last
  if #keys == 0 then break end
  local refcounts = {}
  for i, key in ipairs(keys) do refcounts[i] = key .. ':refcount' end
  local bodies = redis.call('MGET', unpack(keys))
  local peeks = redis.call('MGET', unpack(refcounts))
  local i = #keys
  while i >= 1 and taken < wanted and (taken == 0 or bytes < budget) do
    local key, body = keys[i], bodies[i]
    if body then
      out[#out + 1] = key
      out[#out + 1] = body
      out[#out + 1] = redis.call('PTTL', key)
      published[#published + 1] = key
      published[#published + 1] = body
      taken = taken + 1
      bytes = bytes + #body
    end
    seen[#seen + 1] = key
    gone[#gone + 1] = key
    if peeks[i] then gone[#gone + 1] = refcounts[i] end
    i = i - 1
  end
end
if taken < #seen then
  -- a body gone may still be on the other node while the slot moves: refused there
  redis.call('EXISTS', KEYS[1] .. ':moving?1', KEYS[1] .. ':moving?2')
end
if #seen > 0 then
  redis.call('LTRIM', KEYS[1], 0, -#seen - 1)
  redis.call('DEL', unpack(gone))
  if counted then redis.call('HDEL', KEYS[4], unpack(seen)) end
end
if policy == '1' and taken > 0 then
  local batch = {}
  batch[ARGV[7]] = tonumber(ARGV[6])
  batch[ARGV[8]] = ARGV[4]
  batch[ARGV[9]] = published
  out[3] = redis.call(PUBLISH, ARGV[3], cjson.encode(batch))
end
out[4] = length - #seen
return out
