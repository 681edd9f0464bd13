-- Set a queue setting (policy or status) and tell every broker about it.
-- KEYS: 1 the setting's key
-- ARGV: 1 value, 2 wake-up channel, 3 notice
redis.call('SET', KEYS[1], ARGV[1])
redis.call(PUBLISH, ARGV[2], ARGV[3])
return 1
