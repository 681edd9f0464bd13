-- Delayed messages, shared by every script that takes (restmq.engine.scripts puts this
-- text in front of them). A delayed message waits in <q>:delayed, scored by its due time
-- (ms, Redis TIME); once due it goes to the tail of the queue (LPUSH, the end new messages
-- join), due messages in due order. The timer index (the leasing index) keeps a queue while
-- it has leases or delayed messages, scored by the earliest lease deadline or due time.
-- DUE_LIMIT (in the prelude, restmq.engine.limits.DUE_MOVE_LIMIT): due messages one call
-- moves per queue at most.
-- Migration safety: as written at the top of lease_lib.lua.

local function due_clock_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The message number in a key such as q:12 (0 if there is none).
local function due_number_of(key)
  return tonumber(string.match(key, ':(%d+)$') or '0')
end

-- Move up to `limit` of the messages due by `now` from `delayed` to the tail of `list`,
-- the earliest due first to be taken (ties: the older message first), and announce them on
-- `channel`. When more are due than `limit`, those sharing the due time at the limit wait
-- for the next call (unless all share it: they go together), so that due order holds.
-- Whole on its own: it reads what it writes before its first write.
-- Returns how many it moved.
local function move_due(list, delayed, channel, notice, now, limit)
  if limit <= 0 then return 0 end
  local found = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'WITHSCORES',
                           'LIMIT', 0, limit + 1)
  if #found == 0 then return 0 end
  local entries = {}
  if #found > 2 * limit then
    local boundary = found[#found]
    for i = 1, #found - 2, 2 do
      if found[i + 1] ~= boundary then
        entries[#entries + 1] = {found[i], tonumber(found[i + 1])}
      end
    end
    if #entries == 0 then
      -- all share one due time: all of it at once (as many as one add stored at most)
      found = redis.call('ZRANGEBYSCORE', delayed, boundary, boundary, 'WITHSCORES')
    end
  end
  if #entries == 0 then
    for i = 1, #found, 2 do entries[#entries + 1] = {found[i], tonumber(found[i + 1])} end
  end
  for _, entry in ipairs(entries) do entry[3] = due_number_of(entry[1]) end
  table.sort(entries, function(a, b)
    if a[2] ~= b[2] then return a[2] < b[2] end
    return a[3] < b[3]
  end)
  local keys = {}
  for i, entry in ipairs(entries) do keys[i] = entry[1] end
  -- an absent list may still be on the other node while the slot moves: refused there
  if redis.call('EXISTS', list) == 0 then
    redis.call('EXISTS', list .. ':moving?1', list .. ':moving?2')
  end
  for from = 1, #keys, 1000 do
    local to = math.min(from + 999, #keys)
    redis.call('LPUSH', list, unpack(keys, from, to))
    redis.call('ZREM', delayed, unpack(keys, from, to))
  end
  redis.call(PUBLISH, channel, notice)
  return #keys
end

-- The earliest score of zset `key` (nil: none) and whether the read was refused (the key
-- is not on this node: while a slot moves, either on the other node or emptied by the
-- script's own writes).
local function earliest_score(key)
  local first = redis.pcall('ZRANGE', key, 0, 0, 'WITHSCORES')
  if first.err then return nil, true end
  if first[1] then return tonumber(first[2]), false end
  return nil, false
end

-- Keep queue `name`'s place in the timer index `index`: the earliest of its lease deadlines
-- (zset `leased`) and due times (zset `delayed`), or no place without either. Where one of
-- them cannot be read (not on this node while the slot moves: gone there, or emptied by
-- the script's own writes), or both look empty while the slot may be moving, the queue
-- keeps a place, at this score at the latest: a sweep that finds nothing there drops it.
local function place_in_index(index, name, leased, delayed)
  local deadline, unsure_deadline = earliest_score(leased)
  local due, unsure_due = earliest_score(delayed)
  local unsure = unsure_deadline or unsure_due
  local score = deadline
  if due and (not score or due < score) then score = due end
  if score and not unsure then
    redis.call('ZADD', index, score, name)
  elseif score then
    redis.call('ZADD', index, 'LT', score, name)
  elseif not unsure then
    local moving = redis.pcall('EXISTS', name .. ':moving?1', name .. ':moving?2')
    if type(moving) ~= 'table' then redis.call('ZREM', index, name) end
  end
end
