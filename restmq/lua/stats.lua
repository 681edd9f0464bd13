-- Length, status and policy of every queue, in one call.
-- KEYS: 1 QUEUESET
-- ARGV: 1 status key prefix, 2 list key suffix, 3 policy key suffix
-- Returns a flat list: name, length, status, policy, ... (status/policy '' when unset)
local out = {}
local names = redis.call('SMEMBERS', KEYS[1])
table.sort(names)
for _, name in ipairs(names) do
  out[#out + 1] = name
  out[#out + 1] = redis.call('LLEN', name .. ARGV[2])
  out[#out + 1] = redis.call('GET', ARGV[1] .. name) or ''
  out[#out + 1] = redis.call('GET', name .. ARGV[3]) or ''
end
return out
