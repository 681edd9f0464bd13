-- Length, status, policy, leases, dead letters and the streaming consumers of the other
-- brokers of every queue, in one call.
-- KEYS: 1 QUEUESET, 2 the brokers index (zset of broker ids; without it, as on a Valkey
--       Cluster where the census has its own slot, consumers are 0)
-- ARGV: 1 status key prefix, 2 list key suffix, 3 policy key suffix, 4 leased key suffix,
--       5 dead-letter queue suffix, 6 consumer counts key prefix, 7 the asking broker's id,
--       8 delayed key suffix
-- Returns a flat list: name, length, status, policy, leased, dead, consumers, delayed, ...
-- (status/policy '' when unset; dead is the length of <q>:dead, '' when there is no such
-- queue; consumers counts those of every broker but the asking one)
-- A key that holds another type (something else wrote it) reads as empty rather than
-- failing the whole listing, which is also the broker's readiness answer.
local out = {}
local names = redis.call('SMEMBERS', KEYS[1])
table.sort(names)
local known = {}
for _, name in ipairs(names) do known[name] = true end
local consumers = {}
for _, broker in ipairs(KEYS[2] and redis.pcall('ZRANGE', KEYS[2], 0, -1) or {}) do
  if broker ~= ARGV[7] then
    local counts = redis.pcall('HGETALL', ARGV[6] .. broker)
    if type(counts) == 'table' then
      for i = 1, #counts, 2 do
        consumers[counts[i]] = (consumers[counts[i]] or 0) + (tonumber(counts[i + 1]) or 0)
      end
    end
  end
end
for _, name in ipairs(names) do
  out[#out + 1] = name
  local length = redis.pcall('LLEN', name .. ARGV[2])
  local status = redis.pcall('GET', ARGV[1] .. name)
  local policy = redis.pcall('GET', name .. ARGV[3])
  local leased = redis.pcall('ZCARD', name .. ARGV[4])
  out[#out + 1] = type(length) == 'number' and length or 0
  out[#out + 1] = type(status) == 'string' and status or ''
  out[#out + 1] = type(policy) == 'string' and policy or ''
  out[#out + 1] = type(leased) == 'number' and leased or 0
  local dead = ''
  if known[name .. ARGV[5]] then
    local n = redis.pcall('LLEN', name .. ARGV[5] .. ARGV[2])
    dead = type(n) == 'number' and n or 0
  end
  out[#out + 1] = dead
  out[#out + 1] = consumers[name] or 0
  local delayed = redis.pcall('ZCARD', name .. ARGV[8])
  out[#out + 1] = type(delayed) == 'number' and delayed or 0
end
return out
