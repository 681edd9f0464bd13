-- The streaming consumers every other broker serves, per queue (the census; on a Valkey
-- Cluster it lives in its own slot, so /stats/ reads it apart from the queues).
-- KEYS: 1 the brokers index (zset of broker ids)
-- ARGV: 1 consumer counts key prefix, 2 the asking broker's id
-- Returns a flat list: queue, consumers, queue, consumers, ...
local totals = {}
for _, broker in ipairs(redis.pcall('ZRANGE', KEYS[1], 0, -1)) do
  if broker ~= ARGV[2] then
    local counts = redis.pcall('HGETALL', ARGV[1] .. broker)
    if type(counts) == 'table' then
      for i = 1, #counts, 2 do
        totals[counts[i]] = (totals[counts[i]] or 0) + (tonumber(counts[i + 1]) or 0)
      end
    end
  end
end
local out = {}
for queue, count in pairs(totals) do
  out[#out + 1] = queue
  out[#out + 1] = count
end
return out
