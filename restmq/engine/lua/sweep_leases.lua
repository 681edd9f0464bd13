-- One sweep step over every queue: end the leases that ran out and move the due delayed
-- messages to their queue's tail (announced on its channel, so that streams and long polls
-- get them with no take), taking the queues from the leasing index (only those whose
-- earliest deadline or due time has passed).
-- ARGV: 4 most queues to visit, 5 most leases to end, 6 most due messages to move
--       (absent: DUE_LIMIT)
-- Returns: queues visited, leases ended back to their queue, ended as dead letters,
--          1 if leases that ran out or due messages remain (call again), else 0, due
--          messages moved; then, for each queue whose leases ended: its name, how many
--          went back, how many died.
local now = now_ms()
local queues = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
local budget = tonumber(ARGV[5])
local due_budget = tonumber(ARGV[6] or DUE_LIMIT)
local visited, back, dead, moved = 0, 0, 0, 0
local per_queue = {}
for _, name in ipairs(queues) do
  if budget <= 0 and due_budget <= 0 then break end
  local k = queue_keys(name)
  local b, d, ended = return_overdue(k, now, budget)
  local m = move_due(k.list, k.delayed, k.channel, ARGV[3], now, math.min(due_budget, DUE_LIMIT))
  index_queue(k)
  visited, back, dead, moved = visited + 1, back + b, dead + d, moved + m
  budget, due_budget = budget - ended, due_budget - m
  if b + d > 0 then
    per_queue[#per_queue + 1] = {name, b, d}
  end
end
local more = 0
if redis.call('ZCOUNT', KEYS[2], '-inf', now) > 0 then more = 1 end
local out = {visited, back, dead, more, moved}
for _, row in ipairs(per_queue) do
  out[#out + 1] = row[1]
  out[#out + 1] = row[2]
  out[#out + 1] = row[3]
end
return out
