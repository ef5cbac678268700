-- wrk script for tests/bench/http_bench.sh: GET /partitions/key with a
-- different key on each request, so that the benchmark measures routing of
-- many keys rather than one cached answer.
--
--   wrk -s tests/bench/wrk_keys.lua http://127.0.0.1:PORT -- [keys per thread] [path prefix]
--
-- The path prefix defaults to "/partitions/key?key="; "/app/" gives the
-- application route of tests/bench/app_route.lua.
--
-- Each thread cycles through its own block of keys ("user:<n>", with every
-- fourth one hash-tagged as "order:{user:<n>}:<i>"). The requests are built
-- once in init(), so that wrk spends its time sending rather than formatting.

local next_thread = 0

function setup(thread)
  thread:set("tid", next_thread)
  next_thread = next_thread + 1
end

function init(args)
  local n = tonumber(args[1]) or 20000
  local prefix = args[2] or "/partitions/key?key="
  local base = (tid or 0) * n
  reqs = {}
  for i = 1, n do
    local k = base + i
    local key
    if k % 4 == 0 then
      key = "order:%7Buser:" .. k .. "%7D:" .. (k % 7)
    else
      key = "user:" .. k
    end
    reqs[i] = wrk.format("GET", prefix .. key)
  end
  idx = 0
end

function request()
  idx = idx + 1
  if idx > #reqs then
    idx = 1
  end
  return reqs[idx]
end
