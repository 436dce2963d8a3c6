-- Shared by every script of the Redis Streams backend (queue/REDIS.md). Prepended to each
-- script's own body, so every script is one self-contained unit on one slot.
-- Numbers: offsets (< 2^48) and times in ms (< 2^53) are exact in Lua's doubles; they are
-- always turned into strings with `str`, never with tostring (which may print 1.7e+12).

local function str(n)
  return string.format('%d', n)
end

-- "Now": the caller's clock when it passed one (tests with a manual clock), else the
-- server's, so that leases and delays never depend on clients' clocks.
local function ms_now(arg)
  if arg ~= nil and arg ~= '' then
    return tonumber(arg)
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A sorted-set member or hash field naming seq: zero-padded to 15 digits (seq < 2^48), so
-- members with equal scores come back in seq order.
local function mem(seq)
  return string.format('%015d', seq)
end

-- Stream id of partition sequence number `seq`: explicit, `<seq>-1`, so 0 is valid.
local function sid(seq)
  return str(seq) .. '-1'
end

local function seq_of(id)
  return tonumber(string.match(id, '^(%d+)-'))
end

local function field(fields, name)
  for i = 1, #fields, 2 do
    if fields[i] == name then
      return fields[i + 1]
    end
  end
  return nil
end

-- Moves entry `seq` of the group's pending entries to the dead letters, in this one step:
-- XADD to the partition's dead-letter stream, XACK, and forget its lease, hold and count.
-- `k` holds the key names: s, dl, dlnext, lease, hold, wait, att, n.
local function dead_letter(k, group, seq, attempts, reason, now)
  local m = mem(seq)
  local id = sid(seq)
  local e = redis.call('XRANGE', k.s, id, id)
  if #e == 0 then
    -- Trimmed or deleted under a pending entry: must never happen (retention keeps every
    -- pending entry); counted so that stats and tests show it.
    redis.call('HINCRBY', k.n, 'lost', 1)
  else
    local dseq = redis.call('INCR', k.dlnext) - 1
    local args = { 'XADD', k.dl, sid(dseq), 'g', group, 'o', str(seq), 'a', str(attempts), 'r', reason, 't', str(now) }
    local f = e[1][2]
    for i = 1, #f, 2 do
      if f[i] == 'b' or f[i] == 'h' or f[i] == 'i' then
        table.insert(args, f[i])
        table.insert(args, f[i + 1])
      end
    end
    redis.call(unpack(args))
    redis.call('HINCRBY', k.n, 'dead_lettered', 1)
  end
  redis.call('XACK', k.s, group, id)
  redis.call('ZREM', k.lease, m)
  redis.call('ZREM', k.hold, m)
  redis.call('ZREM', k.wait, m)
  redis.call('HDEL', k.att, m)
end

-- Leases whose deadline passed: back to `hold` (ready at the deadline) or, with the
-- attempts used up, to the dead letters. At most `limit` per call.
local function expire_leases(k, group, now, max_attempts, limit)
  local due = redis.call('ZRANGEBYSCORE', k.lease, '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
  for i = 1, #due, 2 do
    local m = due[i]
    local deadline = tonumber(due[i + 1])
    local a = tonumber(redis.call('HGET', k.att, m) or '0')
    redis.call('ZREM', k.lease, m)
    if a >= max_attempts then
      dead_letter(k, group, tonumber(m), a, 'lease expired', now)
    else
      redis.call('ZADD', k.hold, deadline, m)
    end
  end
end

-- Creates consumer group `group` on the partition if it is not there. `latest`: it starts
-- at the next offset published, else at the oldest retained one.
local function ensure_group(k, group, groups_max, latest)
  if redis.call('SISMEMBER', k.groups, group) == 1 then
    return
  end
  if redis.call('SCARD', k.groups) >= groups_max then
    return redis.error_reply('QLIMIT groups per topic')
  end
  local nxt = tonumber(redis.call('GET', k.next) or '0')
  local start = '0-0'
  -- Earliest: from the oldest retained entry (everything trimmed was finished by every
  -- group there was), so a new group on a trimmed stream shows no false lag.
  local cur = nxt
  local first = redis.call('XRANGE', k.s, '-', '+', 'COUNT', 1)
  if #first > 0 then
    cur = seq_of(first[1][1])
  end
  if latest and nxt > 0 then
    start = sid(nxt - 1)
    cur = nxt
  end
  redis.call('XGROUP', 'CREATE', k.s, group, start, 'MKSTREAM')
  redis.call('SET', k.cur, str(cur))
  redis.call('SADD', k.groups, group)
end
