-- End up to LIMIT of a queue's leases that ran out: back to the head of the queue,
-- or to the dead letters when handed out max_deliveries times.
-- ARGV: 4 queue, 5 limit
-- Returns: how many went back, how many went to the dead letters.
local k = queue_keys(ARGV[4])
local back, dead = return_overdue(k, now_ms(), tonumber(ARGV[5]))
index_queue(k)
return {back, dead}
