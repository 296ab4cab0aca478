-- Membership: refresh this replica's entry, drop the stale ones, count the live ones, all on
-- the Redis clock (replicas' clocks may disagree).
-- KEYS[1]: sorted set of replica id -> last heartbeat (ms); ARGV[1]: this replica's id;
-- ARGV[2]: liveness (ms): an entry older than this no longer counts.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local liveness = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - liveness)
redis.call('PEXPIRE', KEYS[1], liveness * 2)
return redis.call('ZCARD', KEYS[1])
