-- Length, status and policy of every queue, in one call.
-- KEYS: 1 QUEUESET
-- ARGV: 1 status key prefix, 2 list key suffix, 3 policy key suffix
-- Returns a flat list: name, length, status, policy, ... (status/policy '' when unset)
-- A key that holds another type (something else wrote it) reads as empty rather than
-- failing the whole listing, which is also the broker's readiness answer.
local out = {}
local names = redis.call('SMEMBERS', KEYS[1])
table.sort(names)
for _, name in ipairs(names) do
  out[#out + 1] = name
  local length = redis.pcall('LLEN', name .. ARGV[2])
  local status = redis.pcall('GET', ARGV[1] .. name)
  local policy = redis.pcall('GET', name .. ARGV[3])
  out[#out + 1] = type(length) == 'number' and length or 0
  out[#out + 1] = type(status) == 'string' and status or ''
  out[#out + 1] = type(policy) == 'string' and policy or ''
end
return out
