-- nack and reject: KEYS = s, groups, next, lease, hold, wait, att, n, cur, dl, dlnext, wake.
-- ARGV = now, group, seq, attempt, delay ms, reject (0|1), reason, max attempts.
-- Returns 0 acked (given back or dead-lettered), 1 already acked, 2 lease lost, 3 unknown.
local k = { s = KEYS[1], groups = KEYS[2], next = KEYS[3], lease = KEYS[4], hold = KEYS[5],
  wait = KEYS[6], att = KEYS[7], n = KEYS[8], cur = KEYS[9], dl = KEYS[10], dlnext = KEYS[11],
  wake = KEYS[12] }
local now = ms_now(ARGV[1])
local group = ARGV[2]
local seq = tonumber(ARGV[3])
local attempt = tonumber(ARGV[4])
local delay = tonumber(ARGV[5])
local reject = ARGV[6] == '1'
local reason = ARGV[7]
local max_attempts = tonumber(ARGV[8])
if redis.call('SISMEMBER', k.groups, group) == 0 then
  return redis.error_reply('QNOGROUP ' .. group)
end
local m = mem(seq)
if seq >= tonumber(redis.call('GET', k.next) or '0') then
  return 3
end
if not redis.call('ZSCORE', k.lease, m) then
  if redis.call('ZSCORE', k.hold, m) or redis.call('ZSCORE', k.wait, m) then
    return 2
  end
  if seq < tonumber(redis.call('GET', k.cur) or '0') then
    return 1
  end
  return 2
end
local a = tonumber(redis.call('HGET', k.att, m) or '0')
if a ~= attempt then
  return 2
end
if reject or a >= max_attempts then
  dead_letter(k, group, seq, a, reason, now)
  return 0
end
redis.call('ZREM', k.lease, m)
redis.call('ZADD', k.hold, now + delay, m)
-- Wakes consumers blocked in XREAD on this partition (they read `s` and `wake`).
redis.call('XADD', k.wake, 'MAXLEN', '~', 16, '*', 'w', '1')
return 0
