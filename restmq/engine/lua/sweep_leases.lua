-- One sweep step over every queue: end the leases that ran out, taking the queues
-- from the leasing index (only those whose earliest deadline has passed).
-- ARGV: 4 most queues to visit, 5 most leases to end
-- Returns: queues visited, leases ended back to their queue, ended as dead letters,
--          1 if leases that ran out remain (call again), else 0; then, for each queue
--          whose leases ended: its name, how many went back, how many died.
local now = now_ms()
local queues = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
local budget = tonumber(ARGV[5])
local visited, back, dead = 0, 0, 0
local per_queue = {}
for _, name in ipairs(queues) do
  if budget <= 0 then break end
  local k = queue_keys(name)
  local b, d, ended = return_overdue(k, now, budget)
  index_queue(k)
  visited, back, dead = visited + 1, back + b, dead + d
  budget = budget - ended
  if b + d > 0 then
    per_queue[#per_queue + 1] = {name, b, d}
  end
end
local more = 0
if redis.call('ZCOUNT', KEYS[2], '-inf', now) > 0 then more = 1 end
local out = {visited, back, dead, more}
for _, row in ipairs(per_queue) do
  out[#out + 1] = row[1]
  out[#out + 1] = row[2]
  out[#out + 1] = row[3]
end
return out
