-- ack: KEYS = s, groups, next, lease, hold, wait, att, n, cur.
-- ARGV = group, then pairs seq, attempt.
-- Returns one outcome per receipt: 0 acked, 1 already acked, 2 lease lost, 3 unknown.
-- The writes of all acked receipts go out together, in chunks (one XACK, ZREM, HDEL each).
local k = { s = KEYS[1], groups = KEYS[2], next = KEYS[3], lease = KEYS[4], hold = KEYS[5],
  wait = KEYS[6], att = KEYS[7], n = KEYS[8], cur = KEYS[9] }
local group = ARGV[1]
if redis.call('SISMEMBER', k.groups, group) == 0 then
  return redis.error_reply('QNOGROUP ' .. group)
end
local nxt = tonumber(redis.call('GET', k.next) or '0')
local cur = tonumber(redis.call('GET', k.cur) or '0')
local out = {}
local ids, members, held = {}, {}, {}
local acked = 0
local function flush()
  if #ids > 0 then
    redis.call('XACK', k.s, group, unpack(ids))
    redis.call('ZREM', k.lease, unpack(members))
    redis.call('HDEL', k.att, unpack(members))
    ids, members = {}, {}
  end
  if #held > 0 then
    redis.call('ZREM', k.hold, unpack(held))
    held = {}
  end
end
-- Two receipts for one seq in a call: the second sees the first's effect.
local done_here = {}
for j = 2, #ARGV, 2 do
  local seq = tonumber(ARGV[j])
  local attempt = tonumber(ARGV[j + 1])
  local m = str(seq)
  local o
  if seq >= nxt then
    o = 3
  elseif done_here[m] then
    o = 1
  else
    local in_lease = redis.call('ZSCORE', k.lease, m)
    local in_hold = (not in_lease) and redis.call('ZSCORE', k.hold, m)
    if in_lease or in_hold then
      local a = tonumber(redis.call('HGET', k.att, m) or '0')
      if attempt >= 1 and a == attempt then
        table.insert(ids, sid(seq))
        table.insert(members, m)
        if in_hold then
          table.insert(held, m)
        end
        done_here[m] = true
        acked = acked + 1
        o = 0
        if #ids >= 500 then
          flush()
        end
      else
        o = 2
      end
    elseif redis.call('ZSCORE', k.wait, m) then
      o = 2
    elseif seq < cur then
      o = 1
    else
      o = 2
    end
  end
  table.insert(out, o)
end
flush()
if acked > 0 then
  redis.call('HINCRBY', k.n, 'acked', acked)
end
return out
