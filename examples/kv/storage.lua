--- The local storage of the KV example: one in-memory Lua table per partition.
--
-- Every value carries a version stamp {epoch, seq}:
--
--   epoch  the partition's epoch (from clusterkit's committed table) when the
--          primary accepted the write. clusterkit bumps a partition's epoch
--          whenever its primary or owner set changes, so one epoch has exactly
--          one primary node (but that node may crash and restart within it).
--   seq    a hybrid logical clock of the partition: the primary takes
--          max(highest seq it knows for the partition + 1, wall clock in ms).
--
-- Stamps are ordered by epoch, then seq. Why seq never goes backwards:
--
--   * Every node keeps `seq`, the highest seq it has issued, applied, merged
--     or been told about (a replica's 409 STALE_STAMP) for the partition,
--     whatever the epoch; partition copies carry it. A primary issues only
--     seqs above it.
--   * Storage is memory only, so a restarted node starts at 0: it first
--     copies each partition it owns from enough other owners that every write
--     a quorum acknowledged is among the copies (see init.lua), which raises
--     `seq` above every acknowledged stamp before the partition serves. A
--     promoted or gaining node does the same copy.
--   * The wall-clock part keeps stamps unique across incarnations even for
--     writes that reached only an owner the copy did not ask (a write that
--     failed): a restarted primary starts at its clock, past every seq its
--     previous incarnation took from the clock. This part assumes the clock
--     does not step back across a restart; the copy alone already protects
--     every acknowledged write.
--
-- Applying a write keeps the entry with the higher stamp, so applying the same
-- writes in any order, any number of times, gives the same result: replication
-- and partition copies can be retried and merged freely. A delete is stored as
-- a tombstone (an entry without a value) so that merging an older copy cannot
-- bring the key back; tombstones are kept as long as the partition is (this is
-- an example, not a database).
--
-- Besides its entries, each partition remembers:
--
--   seen_epoch  the highest epoch this node has seen for the partition, from its
--               own table or from a peer. A write stamped with an older epoch
--               comes from a primary that has been replaced: it is refused.
--   seq         the highest seq known here (above).
--   ready       whether the local copy is complete (false while it is copied
--               from other owners after this node gained or took over the
--               partition, or started).
--   gen         bumped by every ownership change, so that a copy started for an
--               older change does not declare the partition ready.
--   dropped     the entries drop_before() set aside (not served): a node that
--               regains a partition it held replaces its old copy by a fresh
--               one from the previous owners, but while that copy is not
--               complete its old one may be the only copy of acknowledged
--               writes left (the previous owners may be copying from it in
--               turn). A copy that gives up restores them (init.lua).
local M = {}

local format, byte, char, tonumber = string.format, string.byte, string.char, tonumber

-- Keys and values are arbitrary bytes; partition copies travel as JSON, so they
-- are hex-encoded there.
local function hex(s)
  return (s:gsub(".", function(c) return format("%02x", byte(c)) end))
end

local function unhex(h)
  if type(h) ~= "string" or #h % 2 ~= 0 or h:find("[^%x]") then
    return nil
  end
  return (h:gsub("%x%x", function(x) return char(tonumber(x, 16)) end))
end

M.hex, M.unhex = hex, unhex

--- True when stamp (e1, s1) is newer than (e2, s2).
local function newer(e1, s1, e2, s2)
  return e1 > e2 or (e1 == e2 and s1 > s2)
end
M.newer = newer

local Part = {}
Part.__index = Part

local function new_part(index)
  return setmetatable({index = index, entries = {}, keys = 0, seen_epoch = 0, seq = 0,
                       ready = false, gen = 0, lost_at = nil, dropped = {}}, Part)
end

--- The live entry of key ({value, epoch, seq}), or nil (missing or deleted).
function Part:get(key)
  local e = self.entries[key]
  if e and e.value ~= nil then
    return e
  end
  return nil
end

--- Stores value (nil: a tombstone) under key when the stamp is newer than
-- what is there. Returns true when it changed the entry, else false and the
-- entry that is there (with an equal or newer stamp).
function Part:apply(key, value, epoch, seq)
  self:observe(seq)
  local e = self.entries[key]
  if e and not newer(epoch, seq, e.epoch, e.seq) then
    return false, e
  end
  local had = e ~= nil and e.value ~= nil
  self.entries[key] = {value = value, epoch = epoch, seq = seq}
  if had and value == nil then
    self.keys = self.keys - 1
  elseif not had and value ~= nil then
    self.keys = self.keys + 1
  end
  if epoch > self.seen_epoch then
    self.seen_epoch = epoch
  end
  return true
end

--- The entry of key with its stamp, tombstones included (or nil).
function Part:entry(key)
  return self.entries[key]
end

--- The next sequence number for a write this node accepts as primary:
-- above every seq known here, and not below the wall clock `now_ms`.
function Part:next_seq(now_ms)
  self.seq = math.max(self.seq + 1, math.floor(now_ms or 0))
  return self.seq
end

--- Raises the highest known seq to `seq` (never lowers it).
function Part:observe(seq)
  if type(seq) == "number" and seq > self.seq then
    self.seq = seq
  end
end

--- Raises seen_epoch to `epoch` (never lowers it).
function Part:see(epoch)
  if epoch > self.seen_epoch then
    self.seen_epoch = epoch
  end
end

--- The whole partition as a JSON-encodable table (keys and values in hex).
-- With `with_dropped`, also the entries drop_before() set aside (for each key
-- the one with the newer stamp).
function Part:export(with_dropped)
  local list = {}
  for k, e in pairs(self.entries) do
    local d = with_dropped and self.dropped[k]
    if d and newer(d.epoch, d.seq, e.epoch, e.seq) then e = d end
    list[#list + 1] = {k = hex(k), v = e.value and hex(e.value) or nil, e = e.epoch, s = e.seq}
  end
  if with_dropped then
    for k, e in pairs(self.dropped) do
      if not self.entries[k] then
        list[#list + 1] = {k = hex(k), v = e.value and hex(e.value) or nil, e = e.epoch, s = e.seq}
      end
    end
  end
  return {partition = self.index, seen_epoch = self.seen_epoch, seq = self.seq, entries = list}
end

--- Merges a copy made by export() on another node. Returns the number of
-- entries that changed, or nil, reason when the copy is malformed.
function Part:merge(copy)
  if type(copy) ~= "table" or type(copy.entries) ~= "table" then
    return nil, "not a partition copy"
  end
  local changed = 0
  for _, x in ipairs(copy.entries) do
    local k = type(x) == "table" and unhex(x.k)
    local v = x.v ~= nil and unhex(x.v) or nil
    if not k or (x.v ~= nil and not v) or type(x.e) ~= "number" or type(x.s) ~= "number" then
      return nil, "malformed entry"
    end
    if self:apply(k, v, x.e, x.s) then
      changed = changed + 1
    end
  end
  if type(copy.seen_epoch) == "number" then
    self:see(copy.seen_epoch)
  end
  self:observe(copy.seq)
  return changed
end

--- Sets aside the entries written before `epoch` (what a node kept from an
-- earlier ownership of the partition may include writes that never reached a
-- quorum; a fresh copy from the previous owners replaces it). They are no
-- longer served, but kept in `dropped` until forget_dropped() or clear().
function Part:drop_before(epoch)
  for k, e in pairs(self.entries) do
    if e.epoch < epoch then
      if e.value ~= nil then self.keys = self.keys - 1 end
      self.entries[k] = nil
      local d = self.dropped[k]
      if not d or newer(e.epoch, e.seq, d.epoch, d.seq) then self.dropped[k] = e end
    end
  end
end

--- Applies the entries drop_before() set aside again (newer stamps win, as
-- always) and forgets them. Returns the number of entries that changed.
function Part:restore_dropped()
  local changed = 0
  local dropped = self.dropped
  self.dropped = {}
  for k, e in pairs(dropped) do
    if self:apply(k, e.value, e.epoch, e.seq) then changed = changed + 1 end
  end
  return changed
end

--- Forgets the entries drop_before() set aside (a fresh copy replaced them).
function Part:forget_dropped()
  self.dropped = {}
end

--- Forgets everything (the partition moved away and its linger time passed)
-- but `seq` and `seen_epoch`: stamps never go backwards here.
function Part:clear()
  self.entries, self.keys, self.ready, self.dropped = {}, 0, false, {}
end

--- A store: partitions created on first use, by 0-based index.
function M.new()
  local parts = {}
  return {
    parts = parts,
    part = function(_, index)
      local p = parts[index]
      if not p then
        p = new_part(index)
        parts[index] = p
      end
      return p
    end,
  }
end

return M
