-- maintain (any client may run it, at any time; idempotent):
-- KEYS = s, groups, delays, dl, dlnext, dld, st, then per group: lease, hold, wait, att,
-- n, cur.
-- ARGV = now, max attempts, then the group names in KEYS order.
-- Expires leases of every group (dead-lettering exhausted ones), forgets fired delays and
-- trims the stream below the oldest entry any group still needs (XTRIM MINID, never
-- MAXLEN: a work queue must not drop what a group has not finished).
-- Also drops consumers gone for an hour and resolved dead letters at the front of the
-- dead-letter stream. Returns {trimmed entries, first retained seq or -1}.
local now = ms_now(ARGV[1])
local max_attempts = tonumber(ARGV[2])
local s = KEYS[1]
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local low = nil
local ng = #ARGV - 2
for j = 1, ng do
  local group = ARGV[2 + j]
  local b = 7 + (j - 1) * 6
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
-- Consumers that hold nothing and were idle for an hour (processes that went away) leave
-- the group, so the consumer list stays proportional to the live processes.
for j = 1, ng do
  local group = ARGV[2 + j]
  if redis.call('SISMEMBER', KEYS[2], group) == 1 then
    local consumers = redis.call('XINFO', 'CONSUMERS', s, group)
    for _, c in ipairs(consumers) do
      local name, pending, idle = nil, 0, 0
      for i = 1, #c, 2 do
        if c[i] == 'name' then
          name = c[i + 1]
        elseif c[i] == 'pending' then
          pending = c[i + 1]
        elseif c[i] == 'idle' then
          idle = c[i + 1]
        end
      end
      if name and pending == 0 and idle > 3600000 then
        redis.call('XGROUP', 'DELCONSUMER', s, group, name)
      end
    end
  end
end
-- Resolved dead letters at the front of the dead-letter stream go (at most 100 a round);
-- like the engine's dead-letter segments, those behind a pending one stay (and `peek`
-- shows them) until it is resolved too.
local dld = KEYS[6]
for _ = 1, 100 do
  local front = redis.call('XRANGE', KEYS[4], '-', '+', 'COUNT', 1)
  if #front == 0 then
    break
  end
  local dseq = str(seq_of(front[1][1]))
  if redis.call('SISMEMBER', dld, dseq) == 0 then
    break
  end
  redis.call('XDEL', KEYS[4], front[1][1])
  redis.call('SREM', dld, dseq)
end
-- Entries below `<low>-0` are every `<seq>-1` with seq < low: done for every group. Only
-- when the groups given are every group of the partition: one created since the caller
-- listed them may already hold entries pending.
local trimmed = 0
if low ~= nil and low > 0 and redis.call('SCARD', KEYS[2]) == ng then
  trimmed = redis.call('XTRIM', s, 'MINID', str(low) .. '-0')
end
local first = redis.call('XRANGE', s, '-', '+', 'COUNT', 1)
local first_seq = -1
-- The trimmed entries' bytes leave the backlog: `base` is the byte count before the first
-- retained entry (all of them when none is left).
if #first > 0 then
  first_seq = seq_of(first[1][1])
  local c = field(first[1][2], 'c')
  if c then
    redis.call('HSET', KEYS[7], 'base', c)
  end
else
  redis.call('HSET', KEYS[7], 'base', redis.call('HGET', KEYS[7], 'cum') or '0')
end
return { trimmed, first_seq }
