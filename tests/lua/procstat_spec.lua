-- The /proc parsers behind /metrics' process_* series, on fixed text.
local procstat = require "clusterkit.procstat"

describe("procstat", function()
  it("counts /proc/self/stat fields from the last parenthesis (command names may hold spaces and parens)", function()
    local fields = {}
    for i = 3, 52 do fields[#fields + 1] = tostring(i) end
    local line = "4242 (ck (run) x) " .. table.concat(fields, " ") .. "\n"
    assert.same({utime = 14, stime = 15, starttime = 22, vsize = 23, rss = 24}, procstat.parse_stat(line))
    assert.is_nil(procstat.parse_stat("garbage"))
    assert.is_nil(procstat.parse_stat(nil))
    assert.is_nil(procstat.parse_stat("1 (x) S 1 2"))
  end)

  it("reads btime and the open-files limit", function()
    assert.equal(1700000000, procstat.parse_btime("cpu  1 2 3\nintr 5\nbtime 1700000000\nprocesses 9\n"))
    assert.is_nil(procstat.parse_btime("cpu 1\n"))
    local limits = "Limit                     Soft Limit           Hard Limit           Units\n"
      .. "Max open files            1024                 4096                 files\n"
    assert.equal(1024, procstat.parse_max_fds(limits))
    assert.is_nil(procstat.parse_max_fds("Max open files            unlimited            unlimited            files\n"))
  end)

  it("reads this process's figures", function()
    local p = procstat.read()
    assert.is_true(p.resident_bytes > 0)
    assert.is_true(p.open_fds >= 3)
    assert.is_true(p.start_time_seconds > 1e9)
  end)
end)
