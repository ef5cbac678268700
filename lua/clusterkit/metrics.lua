--- Histograms for /metrics. The counting is C's (core.histogram, the same
-- ck_hist that ck_node files raft's commit and apply times into), so every
-- histogram has the same buckets; this module keeps histograms by the value
-- of a label and writes any of them in the Prometheus text format.
local core = require "clusterkit.core"

local format = string.format
local hrtime = core.hrtime

local M = {}

-- Upper bounds in seconds, ascending; readings have one more count (+Inf).
M.BOUNDS = core.histogram_bounds

local Family = {}
Family.__index = Family

--- Histograms by the value of one label (`label`: "route", "hook"), each
-- made on first use.
function M.family(label)
  return setmetatable({label = label, by = {}}, Family)
end

--- The histogram for label value `key` (made empty if new).
function Family:get(key)
  local h = self.by[key]
  if not h then
    h = core.histogram()
    self.by[key] = h
  end
  return h
end

--- Files the time since `t0` (a core.hrtime() value) under `key`.
function Family:since(key, t0)
  self:get(key):observe((hrtime() - t0) / 1e9)
end

--- A label value in the text format's escaping.
function M.escape(v)
  return (tostring(v):gsub('[\\"\n]', {["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n"}))
end

--- Appends the lines of histogram `name` to `out`: `of` is a Family (one
-- series per label value, sorted), or one reading ({counts, count, sum},
-- from h:read() or node:counters()) for an unlabelled histogram.
function M.histogram(out, name, help, of)
  out[#out + 1] = "# HELP " .. name .. " " .. help
  out[#out + 1] = "# TYPE " .. name .. " histogram"
  local series = {}
  if getmetatable(of) == Family then
    local keys = {}
    for k in pairs(of.by) do keys[#keys + 1] = k end
    table.sort(keys)
    for i, k in ipairs(keys) do
      series[i] = {of.label .. '="' .. M.escape(k) .. '"', of.by[k]:read()}
    end
  else
    series[1] = {"", of}
  end
  for _, s in ipairs(series) do
    local labels, r = s[1], s[2]
    local le = "{" .. labels .. (labels ~= "" and "," or "") .. 'le="'
    local total = 0
    for i, bound in ipairs(M.BOUNDS) do
      total = total + r.counts[i]
      out[#out + 1] = format('%s_bucket%s%g"} %d', name, le, bound, total)
    end
    out[#out + 1] = format('%s_bucket%s+Inf"} %d', name, le, r.count)
    labels = labels ~= "" and "{" .. labels .. "}" or ""
    out[#out + 1] = format("%s_sum%s %.9f", name, labels, r.sum)
    out[#out + 1] = format("%s_count%s %d", name, labels, r.count)
  end
end

return M
