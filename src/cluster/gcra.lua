-- GCRA on the Redis clock (one clock for every replica): take up to ARGV[3] permits of a
-- bucket at once, or say how long until one is free. Read, decide and write in one call.
-- KEYS[1]: the bucket's theoretical arrival time (µs); KEYS[2] (optional): a pause, while it
-- exists no permit is given (a vendor 429 seen by any replica).
-- ARGV[1]: emission interval (µs); ARGV[2]: burst; ARGV[3]: permits wanted.
-- Returns {granted, n}: granted > 0 and n permits left at once, or granted = 0 and n µs to wait.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
if KEYS[2] then
  local pause = redis.call('PTTL', KEYS[2])
  if pause > 0 then
    return {0, pause * 1000}
  end
end
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local wanted = tonumber(ARGV[3])
local tat = now
local stored = redis.call('GET', KEYS[1])
if stored then
  tat = math.max(tonumber(stored), now)
end
local available = math.floor((now + burst * interval - tat) / interval)
if available < 1 then
  return {0, tat + interval - burst * interval - now}
end
local granted = math.min(wanted, available)
tat = tat + granted * interval
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
return {granted, available - granted}
