-- Add one or more messages to a queue, atomically: now, or delayed; once per idempotency
-- key; to the queue itself, or to each of its subscriptions; never past a max_length.
-- KEYS: 1 the queue's registry (QUEUESET), 2 <q>:UUID, 3 <q>:queue, 4 queuestat::<q>,
--       5 the timer index (the leasing index: queues by their next deadline or due time)
-- ARGV: 1 the queue's stem, 2 ttl in seconds (0: none), 3 channel prefix, 4 notice word
--       (restmq.engine.notices.ADD), 5 delay in ms (0: none), 6 idempotency key ('': none),
--       7 the payload's digest, 8 how long an idempotency key is kept (s), 9 status key
--       prefix, 10.. message bodies
-- An idempotency key is remembered as <stem>#idempotency:<key>: no queue's key holds a '#'.
-- Returns the new message keys, oldest first; or, instead:
--   {'=replayed', key, ...}  the idempotency key was used with this payload: its keys
--   {'!conflict'}            the idempotency key was used with another payload
--   {'!full', stem, max}     the queue (or a subscription) would pass its max_length
-- While <q> has subscriptions (<q>:subscriptions, names) each message is added to every
-- subscription queue <q>:<name> instead, with that queue's own keys; the keys answered
-- are numbered by <q>'s counter, as for any add. A delayed message waits in <stem>:delayed
-- (scored by its due time, ms, Redis TIME) and the queue's place in the timer index is its
-- earliest due time at most; takes and the sweep move it to the tail once due.
-- Bodies without a ttl are stored by one MSET and the keys queued by one LPUSH, CHUNK
-- at a time (unpack has a limit): a batch costs a few commands, not two per message.
local CHUNK = 1000
local stem, ttl, prefix, notice = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local delay, idempotency, digest = tonumber(ARGV[5]), ARGV[6], ARGV[7]
local window, status_prefix = tonumber(ARGV[8]), ARGV[9]
local first = 10
local count = #ARGV - first + 1

local remembered = nil
if idempotency ~= '' then
  remembered = stem .. '#idempotency:' .. idempotency
  local stored = redis.call('GET', remembered)
  if stored then
    local cut = string.find(stored, '\n', 1, true)
    if string.sub(stored, 1, cut - 1) ~= digest then return {'!conflict'} end
    local out = {'=replayed'}
    for key in string.gmatch(string.sub(stored, cut + 1), '%S+') do out[#out + 1] = key end
    return out
  end
end

-- Every key the script will write is touched before anything is written: while a cluster
-- slot moves, Valkey may refuse a script's access to keys it lacks, stopping the script.
local subscriptions = redis.call('SMEMBERS', stem .. ':subscriptions')
local targets = {stem}
if #subscriptions > 0 then
  table.sort(subscriptions)
  targets = {}
  for i, name in ipairs(subscriptions) do targets[i] = stem .. ':' .. name end
end

local function numbered(target, counter)
  local last = (tonumber(redis.call('GET', counter) or '0') or 0) + count
  local keys = {}
  for i = 1, count do keys[i] = target .. ':' .. (last - count + i) end
  return keys
end

local answer = numbered(stem, KEYS[2])
local plans = {}
for i, target in ipairs(targets) do
  local max = tonumber(redis.call('GET', target .. ':maxlength') or '0') or 0
  if max > 0 and redis.call('LLEN', target .. ':queue') + redis.call('ZCARD', target .. ':delayed')
      + count > max then
    return {'!full', target, max}
  end
  local plan = {name = target, counter = target .. ':UUID', list = target .. ':queue',
                delayed = target .. ':delayed', status = status_prefix .. target}
  plan.keys = target == stem and answer or numbered(target, plan.counter)
  plans[i] = plan
  if target ~= stem then
    -- several keys in one read: refused while the slot moves, where a lone read of a
    -- subscription's counter could miss it (still on the other node) and reuse numbers
    redis.call('EXISTS', plan.counter, plan.list, plan.delayed, plan.status)
  elseif delay > 0 then
    redis.call('EXISTS', plan.delayed)
  end
  for from = 1, count, CHUNK do
    redis.call('EXISTS', unpack(plan.keys, from, math.min(from + CHUNK - 1, count)))
  end
end
if remembered then redis.call('EXISTS', remembered, KEYS[2]) end

local due = 0
if delay > 0 then
  local t = redis.call('TIME')
  due = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + delay
end
if #subscriptions > 0 then redis.call('INCRBY', KEYS[2], count) end
for _, plan in ipairs(plans) do
  local keys = plan.keys
  redis.call('INCRBY', plan.counter, count)
  for from = 1, count, CHUNK do
    local to = math.min(from + CHUNK - 1, count)
    if ttl > 0 then
      for i = from, to do
        redis.call('SET', keys[i], ARGV[first - 1 + i], 'EX', ttl)
      end
    else
      local pairs = {}
      for i = from, to do
        pairs[#pairs + 1] = keys[i]
        pairs[#pairs + 1] = ARGV[first - 1 + i]
      end
      redis.call('MSET', unpack(pairs))
    end
    if due > 0 then
      local scored = {}
      for i = from, to do
        scored[#scored + 1] = due
        scored[#scored + 1] = keys[i]
      end
      redis.call('ZADD', plan.delayed, unpack(scored))
    else
      redis.call('LPUSH', plan.list, unpack(keys, from, to))
    end
  end
  if redis.call('SADD', KEYS[1], plan.name) == 1 then
    redis.call('SET', plan.status, '1', 'NX')
  end
  if due > 0 then
    redis.call('ZADD', KEYS[5], 'LT', due, plan.name)
  else
    redis.call(PUBLISH, prefix .. plan.name, notice)
  end
end
if remembered then
  redis.call('SET', remembered, digest .. '\n' .. table.concat(answer, ' '), 'EX', window)
end
return answer
