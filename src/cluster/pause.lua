-- A vendor 429 seen by one replica pauses the endpoint for the fleet: the pause key lives for
-- ARGV[1] ms, or longer if a longer pause is already set.
local left = redis.call('PTTL', KEYS[1])
if left < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 1
