-- End up to LIMIT of a queue's leases that ran out: back to the head of the queue,
-- or to the dead letters when handed out max_deliveries times.
-- ARGV: 3 queue, 4 limit
-- Returns: how many went back, how many went to the dead letters.
local k = queue_keys(ARGV[3])
local back, dead = return_overdue(k, now_ms(), tonumber(ARGV[4]))
index_queue(k)
return {back, dead}
