-- Shared by the lease scripts: restmq.engine.scripts puts this text in front of each of them.
-- Every lease script gets KEYS 1 QUEUESET, 2 the leasing index (a sorted set of the
-- queues that have leases, scored by their earliest lease deadline), and ARGV
-- 1 status key prefix, 2 channel prefix, 3 the notice word published when messages
-- come back to a queue (restmq.engine.notices.ADD); its own arguments follow.

-- Milliseconds since the epoch by the server's clock: the one clock every broker shares.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The keys of queue q that leases touch (the layout documented in restmq.engine.keys).
local function queue_keys(q)
  return {
    name = q,
    list = q .. ':queue',
    leased = q .. ':leased',
    deliveries = q .. ':deliveries',
    max = q .. ':maxdeliveries',
    channel = ARGV[2] .. q,
    dead = q .. ':dead',
    dead_list = q .. ':dead:queue',
    dead_status = ARGV[1] .. q .. ':dead',
    dead_channel = ARGV[2] .. q .. ':dead',
  }
end

-- Keep q's place in the leasing index: its earliest deadline, or no place without leases.
local function index_queue(k)
  local first = redis.call('ZRANGE', k.leased, 0, 0, 'WITHSCORES')
  if first[1] then
    redis.call('ZADD', KEYS[2], first[2], k.name)
  else
    redis.call('ZREM', KEYS[2], k.name)
  end
end

-- True when `key` is leased, the lease has not run out, and its delivery count is `times`:
-- only the holder of the latest delivery's receipt may settle it.
local function holds(k, key, times, now)
  local deadline = redis.call('ZSCORE', k.leased, key)
  if not deadline or tonumber(deadline) <= now then return false end
  return redis.call('HGET', k.deliveries, key) == times
end

-- End the leases of `keys` (listed in the order they should be taken again). A message
-- handed out max_deliveries times goes to the dead-letter queue <q>:dead (registered and
-- started like any queue, its list holding the original key); the others go back to the
-- head of the queue, keys[1] next to be taken. With `counted` false the delivery never
-- reached anyone: it is taken back from the count and cannot make the message dead.
-- A message whose body expired meanwhile is simply forgotten.
-- Returns how many went back and how many went to the dead letters.
local function end_leases(k, keys, counted)
  local max = tonumber(redis.call('GET', k.max) or '0') or 0
  local back, dead = {}, {}
  for _, key in ipairs(keys) do
    redis.call('ZREM', k.leased, key)
    if redis.call('EXISTS', key) == 0 then
      redis.call('HDEL', k.deliveries, key)
    else
      local times = tonumber(redis.call('HGET', k.deliveries, key) or '0') or 0
      if not counted then
        times = times - 1
        if times > 0 then
          redis.call('HSET', k.deliveries, key, times)
        else
          redis.call('HDEL', k.deliveries, key)
        end
      end
      if counted and max > 0 and times >= max then
        redis.call('HDEL', k.deliveries, key)
        dead[#dead + 1] = key
      else
        back[#back + 1] = key
      end
    end
  end
  for i = #back, 1, -1 do
    redis.call('RPUSH', k.list, back[i])
  end
  if #back > 0 then
    redis.call(PUBLISH, k.channel, ARGV[3])
  end
  if #dead > 0 then
    for _, key in ipairs(dead) do
      redis.call('LPUSH', k.dead_list, key)
    end
    if redis.call('SADD', KEYS[1], k.dead) == 1 then
      redis.call('SET', k.dead_status, '1', 'NX')
    end
    redis.call(PUBLISH, k.dead_channel, ARGV[3])
  end
  return #back, #dead
end

-- The message number in a key such as q:12 (0 if there is none).
local function number_of(key)
  return tonumber(string.match(key, ':(%d+)$') or '0')
end

-- End up to `limit` leases of q that ran out by `now`. The lease that ran out first goes
-- nearest the head (ties: the older message first), so the queue keeps its order. When
-- more ran out than `limit`, those that ran out last are ended first: the next call puts
-- the earlier ones in front of them. Leases that share the deadline at the limit are left
-- together to the next call (unless all share it).
-- Returns how many went back, how many went to the dead letters, and how many leases
-- ended in all (those of expired messages too).
local function return_overdue(k, now, limit)
  if limit <= 0 then return 0, 0, 0 end
  -- one more than the limit: it tells whether the last deadline taken goes on beyond it
  local found = redis.call('ZREVRANGEBYSCORE', k.leased, now, '-inf', 'WITHSCORES',
                           'LIMIT', 0, limit + 1)
  if #found == 0 then return 0, 0, 0 end
  local boundary = nil
  if #found > 2 * limit then
    boundary = found[#found]
    found[#found] = nil
    found[#found] = nil
  end
  local entries = {}
  for i = 1, #found, 2 do
    if found[i + 1] ~= boundary then
      entries[#entries + 1] = {found[i], tonumber(found[i + 1]), number_of(found[i])}
    end
  end
  if #entries == 0 then
    for i = 1, #found, 2 do
      entries[#entries + 1] = {found[i], tonumber(found[i + 1]), number_of(found[i])}
    end
  end
  table.sort(entries, function(a, b)
    if a[2] ~= b[2] then return a[2] < b[2] end
    return a[3] < b[3]
  end)
  local keys = {}
  for i, entry in ipairs(entries) do keys[i] = entry[1] end
  local back, dead = end_leases(k, keys, true)
  return back, dead, #keys
end

-- Lease the oldest live message of q until `deadline`: its key, body and delivery count
-- (this delivery included), or nil when q has none. Keys whose body expired are dropped
-- on the way, as a pop does.
local function lease_next(k, deadline)
  while true do
    local key = redis.call('RPOP', k.list)
    if not key then return nil end
    local body = redis.call('GET', key)
    if body then
      redis.call('ZADD', k.leased, deadline, key)
      return key, body, redis.call('HINCRBY', k.deliveries, key, 1)
    end
    redis.call('DEL', key .. ':refcount')
    redis.call('HDEL', k.deliveries, key)
  end
end
