-- maintain (any client may run it, at any time; idempotent):
-- KEYS = s, groups, delays, dl, dlnext, then per group: lease, hold, wait, att, n, cur.
-- ARGV = now, max attempts, then the group names in KEYS order.
-- Expires leases of every group (dead-lettering exhausted ones), forgets fired delays and
-- trims the stream below the oldest entry any group still needs (XTRIM MINID, never
-- MAXLEN: a work queue must not drop what a group has not finished).
-- Returns {trimmed entries, first retained seq or -1}.
local now = ms_now(ARGV[1])
local max_attempts = tonumber(ARGV[2])
local s = KEYS[1]
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local low = nil
local ng = #ARGV - 2
for j = 1, ng do
  local group = ARGV[2 + j]
  local b = 5 + (j - 1) * 6
  local k = { s = s, dl = KEYS[4], dlnext = KEYS[5], lease = KEYS[b + 1], hold = KEYS[b + 2],
    wait = KEYS[b + 3], att = KEYS[b + 4], n = KEYS[b + 5], cur = KEYS[b + 6] }
  if redis.call('SISMEMBER', KEYS[2], group) == 1 then
    expire_leases(k, group, now, max_attempts, 10000)
    -- What the group still needs: its oldest pending entry, else everything from its cursor.
    local need = tonumber(redis.call('GET', k.cur) or '0')
    local p = redis.call('XPENDING', s, group)
    if p[1] > 0 then
      local first = seq_of(p[2])
      if first < need then
        need = first
      end
    end
    if low == nil or need < low then
      low = need
    end
  end
end
local trimmed = 0
-- Entries below `<low>-0` are every `<seq>-1` with seq < low: done for every group.
if low ~= nil and low > 0 then
  trimmed = redis.call('XTRIM', s, 'MINID', str(low) .. '-0')
end
local first = redis.call('XRANGE', s, '-', '+', 'COUNT', 1)
local first_seq = -1
if #first > 0 then
  first_seq = seq_of(first[1][1])
end
return { trimmed, first_seq }
