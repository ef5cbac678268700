-- Feature flags and configuration on the replicated KV store: every node
-- keeps the flags under "flags/" in a local table, updated through a watch
-- (a push, not the Go library's poll of its custom data), and its handlers
-- read the table without a network call.
--
--   NODE_ID=node-1 HTTP_ADDR=127.0.0.1:8080 RAFT_ADDR=127.0.0.1:9001 BOOTSTRAP=true \
--     build/ckrun examples/flags/app.lua
--   curl -X PUT --data-binary on 127.0.0.1:8080/v1/kv/flags/new-checkout   # any node
--   curl 127.0.0.1:8081/flags                                             # every node sees it at once
--   curl 127.0.0.1:8081/hello                                             # behaves by the flag
local clusterkit = require "clusterkit"

local ck = clusterkit.new()
assert(ck:start())

local PREFIX = "flags/"
local flags, version = {}, 0

-- Load everything, then follow the changes from the index of that read. A
-- COMPACTED answer (the watch fell too far behind) means: load again.
local function load()
  local fresh, after = {}, nil
  local index
  repeat
    local items, info = assert(ck:kv_list(PREFIX, {after = after, limit = 1000}))
    for _, e in ipairs(items) do fresh[e.key:sub(#PREFIX + 1)] = e.value end
    index, after = info.index, items[#items] and items[#items].key
  until not info.more
  flags = fresh
  return index
end

clusterkit.spawn(function()
  local index = load()
  while true do
    local events, nxt = ck:kv_watch(PREFIX, index, 30)
    if not events then
      ck.log:warn("flags: %s; reloading", tostring(nxt))
      index = load()
    else
      for _, ev in ipairs(events) do
        local name = ev.key:sub(#PREFIX + 1)
        flags[name] = ev.type == "put" and ev.value or nil
        ck.log:info("flags: %s = %s", name, tostring(flags[name]))
      end
      if #events > 0 then version = version + 1 end
      index = nxt
    end
  end
end)

ck:route("GET", "/flags", function(_, res)
  return res:json({node = ck.id, flags = flags, updates = version})
end)

ck:route("GET", "/hello", function(_, res)
  if flags["new-checkout"] == "on" then
    return res:json({message = "hello from the new checkout", node = ck.id})
  end
  return res:json({message = "hello", node = ck.id})
end)
