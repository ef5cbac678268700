--- Process figures for /metrics (the process_* series every Prometheus
-- client exports), read from Linux's /proc. The parsers are pure (they take
-- the files' text) so that tests can feed them; M.read() does the I/O and
-- returns nil where a file cannot be read (another OS, a locked-down /proc).
local ffi = require "ffi"

local M = {}

-- sysconf names on Linux (glibc's <bits/confname.h>).
local SC_CLK_TCK, SC_PAGESIZE = 2, 30

local have_libc = pcall(ffi.cdef, [[
long sysconf(int name);
typedef struct __dirstream DIR;
DIR *opendir(const char *name);
void *readdir(DIR *dirp);
int closedir(DIR *dirp);
]])

--- {utime, stime, starttime (clock ticks), vsize (bytes), rss (pages)}
-- from /proc/self/stat, or nil. The command name (field 2) may hold spaces
-- and parentheses: fields are counted from the last ")".
function M.parse_stat(text)
  if type(text) ~= "string" then return nil end
  local rest = text:match("^.*%)%s+(.*)$")
  if not rest then return nil end
  local f = {}
  for w in rest:gmatch("%S+") do f[#f + 1] = w end
  -- rest starts at field 3 (state): field n is f[n - 2].
  local function field(n) return tonumber(f[n - 2]) end
  local utime, stime, start, vsize, rss = field(14), field(15), field(22), field(23), field(24)
  if not (utime and stime and start and vsize and rss) then return nil end
  return {utime = utime, stime = stime, starttime = start, vsize = vsize, rss = rss}
end

--- The boot time (seconds since the epoch) from /proc/stat's btime line, or nil.
function M.parse_btime(text)
  return type(text) == "string" and tonumber(text:match("\nbtime%s+(%d+)") or text:match("^btime%s+(%d+)")) or nil
end

--- The soft limit of open files from /proc/self/limits, or nil ("unlimited": nil).
function M.parse_max_fds(text)
  return type(text) == "string" and tonumber(text:match("Max open files%s+(%d+)")) or nil
end

local function slurp(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local t = f:read("*a")
  f:close()
  return t
end

-- Entries of /proc/self/fd but "." and ".." (the directory's own fd
-- included, as the Go client counts it), or nil.
local function count_fds()
  if not have_libc then return nil end
  local dir = ffi.C.opendir("/proc/self/fd")
  if dir == nil then return nil end
  local n = 0
  for _ = 1, 1e6 do
    if ffi.C.readdir(dir) == nil then break end
    n = n + 1
  end
  ffi.C.closedir(dir)
  return math.max(0, n - 2)
end

--- {cpu_seconds, resident_bytes, virtual_bytes, start_time_seconds,
-- open_fds, max_fds}; a figure that cannot be read is nil.
function M.read()
  local out = {}
  local st = M.parse_stat(slurp("/proc/self/stat"))
  local tck = have_libc and tonumber(ffi.C.sysconf(SC_CLK_TCK)) or 100
  local page = have_libc and tonumber(ffi.C.sysconf(SC_PAGESIZE)) or 4096
  if st and tck > 0 then
    out.cpu_seconds = (st.utime + st.stime) / tck
    out.resident_bytes = st.rss * page
    out.virtual_bytes = st.vsize
    local btime = M.parse_btime(slurp("/proc/stat"))
    if btime then out.start_time_seconds = btime + st.starttime / tck end
  end
  out.open_fds = count_fds()
  out.max_fds = M.parse_max_fds(slurp("/proc/self/limits"))
  return out
end

return M
