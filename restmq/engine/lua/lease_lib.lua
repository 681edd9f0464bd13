-- Shared by the lease scripts: restmq.engine.scripts puts this text in front of each of them.
-- Every lease script gets KEYS 1 QUEUESET, 2 the leasing index (a sorted set of the
-- queues that have leases or delayed messages, scored by their earliest lease deadline
-- or due time: the timer index of lua/due_lib.lua, which comes first), and ARGV
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
    delayed = q .. ':delayed',
  }
end

-- While a Valkey Cluster slot moves to another node its keys go over one by one, and a
-- node refuses a script's access to a key of that slot it lacks: the script stops where
-- it is and what it wrote stays. So the scripts read (or touch) every key they did not
-- declare before their first write. The importing node answers a lone read of a key it
-- lacks as if there were none, though the key may still wait on the other node: where a
-- script would act on such an absence, it calls stop_if_moving first.

-- Two keys that never exist, read together: refused on either node while q's slot moves
-- (the script stops, having written nothing); elsewhere one EXISTS that answers 0.
local function stop_if_moving(k)
  redis.call('EXISTS', k.name .. ':moving?1', k.name .. ':moving?2')
end

-- Keep q's place in the leasing index: its earliest deadline or due time, or no place
-- without leases and delayed messages (see place_in_index).
local function index_queue(k)
  place_in_index(KEYS[2], k.name, k.leased, k.delayed)
end

-- Move q's due messages to the tail of its list (see move_due); how many moved.
local function move_due_of(k, now)
  return move_due(k.list, k.delayed, k.channel, ARGV[3], now, DUE_LIMIT)
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
-- Everything is read first, then written (see stop_if_moving).
-- Returns how many went back and how many went to the dead letters.
local function end_leases(k, keys, counted)
  local max = redis.call('GET', k.max)
  local unsure = counted and not max
  max = tonumber(max or '0') or 0
  local read, field = {}, {} -- delivery counts as read, and as they end up (false: none)
  local back, dead = {}, {}
  for _, key in ipairs(keys) do
    if read[key] == nil then
      local body = redis.call('EXISTS', key) == 1
      read[key] = redis.call('HGET', k.deliveries, key)
      field[key] = read[key]
      if not body then field[key] = 'gone' end
      unsure = unsure or not body or (counted and max > 0 and not read[key])
    end
    if field[key] == 'gone' then
      -- expired: forgotten (its delivery count too)
    else
      local times = tonumber(field[key] or '0') or 0
      if not counted then
        times = times - 1
        field[key] = times > 0 and tostring(times) or false
      end
      if counted and max > 0 and times >= max then
        field[key] = false
        dead[#dead + 1] = key
      else
        back[#back + 1] = key
      end
    end
  end
  local register = false
  if #back > 0 and redis.call('EXISTS', k.list) == 0 then unsure = true end
  if #dead > 0 then
    if redis.call('EXISTS', k.dead_list) == 0 then unsure = true end
    register = redis.call('SISMEMBER', KEYS[1], k.dead) == 0
    if register and redis.call('EXISTS', k.dead_status) == 0 then unsure = true end
  end
  if unsure then stop_if_moving(k) end
  -- the writes: the queues first, so that no key the script writes to again is emptied
  if #back > 0 then
    local reversed = {}
    for i = #back, 1, -1 do reversed[#reversed + 1] = back[i] end
    redis.call('RPUSH', k.list, unpack(reversed))
  end
  local dropped, done = {}, {}
  for _, key in ipairs(keys) do
    if not done[key] then
      done[key] = true
      local was, now = read[key], field[key]
      if now == 'gone' then now = false end
      if now and now ~= was then
        redis.call('HSET', k.deliveries, key, now)
      elseif was and not now then
        dropped[#dropped + 1] = key
      end
    end
  end
  -- one HDEL: the hash may go with its last field, and a later HDEL would meet no key
  if #dropped > 0 then redis.call('HDEL', k.deliveries, unpack(dropped)) end
  redis.call('ZREM', k.leased, unpack(keys))
  if #back > 0 then
    redis.call(PUBLISH, k.channel, ARGV[3])
  end
  if #dead > 0 then
    redis.call('LPUSH', k.dead_list, unpack(dead))
    if register then
      redis.call('SADD', KEYS[1], k.dead)
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

local CHUNK = 1000 -- keys read with one MGET (unpack has a limit)

-- Read, writing nothing, the oldest keys of q's list (CHUNK at a time from the tail) with
-- their bodies and peek counts, until `wanted` live ones are found, their bodies reach
-- `budget` (one message at least) or the list ends. Returns the keys looked at, oldest
-- first, their bodies and their peek counts (false: expired, never peeked).
local function read_oldest(k, wanted, budget)
  local seen, bodies, peeks = {}, {}, {}
  local live, bytes, from = 0, 0, 0
  while live < wanted and (live == 0 or bytes < budget) do
    local n = math.min(wanted - live, CHUNK)
    local keys = redis.call('LRANGE', k.list, -from - n, -from - 1) -- the oldest is last
    if #keys == 0 then break end
    local refcounts = {}
    for i, key in ipairs(keys) do refcounts[i] = key .. ':refcount' end
    local got = redis.call('MGET', unpack(keys))
    local counts = redis.call('MGET', unpack(refcounts))
    local i = #keys
    while i >= 1 and live < wanted and (live == 0 or bytes < budget) do
      seen[#seen + 1] = keys[i]
      bodies[#seen], peeks[#seen] = got[i], counts[i]
      if got[i] then live, bytes = live + 1, bytes + #got[i] end
      i = i - 1
    end
    from = from + #keys
  end
  -- no list, or a body gone: either may still be on the other node while the slot moves
  if live < #seen or #seen == 0 then stop_if_moving(k) end
  return seen, bodies, peeks
end

-- Lease the oldest live messages of q until `deadline` (read_oldest says which); keys
-- whose body expired are dropped on the way, as a pop does. Returns, for each message
-- leased: key, body, peek count, ms to live (-1 none), deliveries (this one included);
-- and how many keys it took off the list.
local function lease_oldest(k, deadline, wanted, budget)
  local seen, bodies, peeks = read_oldest(k, wanted, budget)
  if #seen == 0 then return {}, 0 end
  -- refused while the slot moves unless both keys the leases change are on this node
  redis.call('EXISTS', k.leased, k.deliveries)
  local taken, leases, expired, refcounts = {}, {}, {}, {}
  for i, key in ipairs(seen) do
    if bodies[i] then
      taken[#taken + 1] = {key, bodies[i], peeks[i] or '0', redis.call('PTTL', key)}
      leases[#leases + 1] = deadline
      leases[#leases + 1] = key
    else
      expired[#expired + 1] = key
      if peeks[i] then refcounts[#refcounts + 1] = key .. ':refcount' end
    end
  end
  redis.call('LTRIM', k.list, 0, -#seen - 1)
  if #leases > 0 then redis.call('ZADD', k.leased, unpack(leases)) end
  for _, message in ipairs(taken) do
    message[5] = redis.call('HINCRBY', k.deliveries, message[1], 1)
  end
  if #expired > 0 then redis.call('HDEL', k.deliveries, unpack(expired)) end
  if #refcounts > 0 then redis.call('DEL', unpack(refcounts)) end
  return taken, #seen
end
