-- The mixed load of benches/soak.sh, for wrk: every vendor endpoint under both prefixes, for
-- many users (the caches fill and expire), keyless and wrong-key calls among them, with a pause
-- between requests so that the rate stays bounded whatever the machine.
local agora = "/app-id/a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6"
local easemob = "/demo-org/demo-app"
local delay_ms = tonumber(os.getenv("SOAK_DELAY_MS") or "20")
local users = tonumber(os.getenv("SOAK_USERS") or "2000")
-- Global: done() reads each thread's counts with thread:get.
statuses = {}

local function user()
  return "soak-" .. math.random(users)
end

local function call(method, path, body, key)
  local headers = { ["Content-Type"] = "application/json" }
  if key ~= "" then
    headers["Authorization"] = "Bearer " .. key
  end
  return wrk.format(method, path, headers, body)
end

-- One request of the mix; weights favour the cached reads, as real traffic does.
local function next_request(prefix)
  local r = math.random(100)
  local u = user()
  local base = prefix .. "/users/" .. u
  if r <= 35 then
    return call("GET", base .. "/offline_msg_count", nil, "demo-key")
  elseif r <= 45 then
    return call("GET", base .. "/offline_msg_status/" .. math.random(1000000), nil, "demo-key")
  elseif r <= 65 then
    local body = string.format('{"usernames":["%s","%s","%s"]}', user(), user(), user())
    return call("POST", base .. "/presence", body, "demo-key")
  elseif r <= 72 then
    local body = string.format('{"ext":"soak %d"}', math.random(1000))
    return call("POST", base .. "/presence/android_1/" .. math.random(0, 1), body, "demo-key")
  elseif r <= 77 then
    local body = string.format('{"usernames":["%s","%s"]}', user(), user())
    return call("POST", base .. "/presence/3600", body, "demo-key")
  elseif r <= 81 then
    return call("GET", base .. "/presence/sublist?pageNum=1&pageSize=10", nil, "demo-key")
  elseif r <= 84 then
    return call("DELETE", base .. "/presence", string.format('["%s"]', user()), "demo-key")
  elseif r <= 94 then
    local body = string.format(
      '{"from":"%s","to":["%s","%s"],"type":"txt","body":{"msg":"soak"}}', u, user(), user())
    return call("POST", prefix .. "/messages/users", body, "demo-key")
  elseif r <= 97 then
    return call("GET", base .. "/offline_msg_count", nil, "")
  else
    return call("GET", base .. "/offline_msg_count", nil, "wrong-key")
  end
end

function init(args)
  math.randomseed(os.time() * 100 + (id or 0))
end

function request()
  if math.random(2) == 1 then
    return next_request(agora)
  end
  return next_request(easemob)
end

function delay()
  return delay_ms
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  -- Each thread its own random sequence.
  thread:set("id", #threads)
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      total[status] = (total[status] or 0) + n
    end
  end
  local line = "statuses:"
  for status, n in pairs(total) do
    line = line .. string.format(" %d=%d", status, n)
  end
  io.write(line .. "\n")
  io.write(string.format("socket errors: connect=%d read=%d write=%d timeout=%d\n",
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout))
end
