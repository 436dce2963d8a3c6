-- ack: KEYS = s, groups, next, lease, hold, wait, att, n, cur.
-- ARGV = group, then pairs seq, attempt.
-- Returns one outcome per receipt: 0 acked, 1 already acked, 2 lease lost, 3 unknown.
local k = { s = KEYS[1], groups = KEYS[2], next = KEYS[3], lease = KEYS[4], hold = KEYS[5],
  wait = KEYS[6], att = KEYS[7], n = KEYS[8], cur = KEYS[9] }
local group = ARGV[1]
if redis.call('SISMEMBER', k.groups, group) == 0 then
  return redis.error_reply('QNOGROUP ' .. group)
end
local nxt = tonumber(redis.call('GET', k.next) or '0')
local cur = tonumber(redis.call('GET', k.cur) or '0')
local out = {}
local acked = 0
for j = 2, #ARGV, 2 do
  local seq = tonumber(ARGV[j])
  local attempt = tonumber(ARGV[j + 1])
  local m = str(seq)
  local o
  if seq >= nxt then
    o = 3
  elseif redis.call('ZSCORE', k.lease, m) or redis.call('ZSCORE', k.hold, m) then
    local a = tonumber(redis.call('HGET', k.att, m) or '0')
    if attempt >= 1 and a == attempt then
      redis.call('XACK', k.s, group, sid(seq))
      redis.call('ZREM', k.lease, m)
      redis.call('ZREM', k.hold, m)
      redis.call('HDEL', k.att, m)
      acked = acked + 1
      o = 0
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
  table.insert(out, o)
end
if acked > 0 then
  redis.call('HINCRBY', k.n, 'acked', acked)
end
return out
