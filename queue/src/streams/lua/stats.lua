-- stats: KEYS = s, next, delays, st, dl, dldone, then per group: lease, hold, wait, n, cur.
-- ARGV = now, then the group names in KEYS order.
-- Returns {next, retained, first seq or -1, delayed pending, published, duplicates,
-- dead letters pending, per group {name, pending, oldest pending seq or -1, leased,
-- retry waiting, delayed waiting, cursor, acked, redeliveries, dead lettered, lost}}.
local now = ms_now(ARGV[1])
local s = KEYS[1]
local function num(v)
  return tonumber(v or '0') or 0
end
local first = redis.call('XRANGE', s, '-', '+', 'COUNT', 1)
local first_seq = -1
if #first > 0 then
  first_seq = seq_of(first[1][1])
end
local out = {
  redis.call('GET', KEYS[2]) or '0',
  redis.call('XLEN', s),
  str(first_seq),
  redis.call('ZCOUNT', KEYS[3], '(' .. str(now), '+inf'),
  str(num(redis.call('HGET', KEYS[4], 'published'))),
  str(num(redis.call('HGET', KEYS[4], 'duplicates'))),
  redis.call('XLEN', KEYS[5]) - redis.call('SCARD', KEYS[6]),
}
for j = 2, #ARGV do
  local group = ARGV[j]
  local b = 6 + (j - 2) * 5
  local pending = 0
  local oldest = -1
  local ok, p = pcall(redis.call, 'XPENDING', s, group)
  if ok and p[1] > 0 then
    pending = p[1]
    oldest = seq_of(p[2])
  end
  local n = redis.call('HGETALL', KEYS[b + 4])
  local counters = { acked = 0, redeliveries = 0, dead_lettered = 0, lost = 0 }
  for i = 1, #n, 2 do
    counters[n[i]] = tonumber(n[i + 1])
  end
  table.insert(out, { group, pending, str(oldest), redis.call('ZCARD', KEYS[b + 1]),
    redis.call('ZCARD', KEYS[b + 2]), redis.call('ZCARD', KEYS[b + 3]),
    redis.call('GET', KEYS[b + 5]) or '0', str(counters.acked), str(counters.redeliveries),
    str(counters.dead_lettered), str(counters.lost) })
end
return out
