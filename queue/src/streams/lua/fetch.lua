-- fetch: KEYS = s, groups, next, lease, hold, wait, att, n, cur, dl, dlnext, wake.
-- ARGV = now, group, consumer, max, lease ms, max attempts, max bytes, in-flight max,
-- groups max, read chunk (most entries one XREADGROUP reads).
-- Expires leases, then hands out (1) retries and fired delays whose time came, (2) new
-- entries read with XREADGROUP (a delayed one not yet due goes to `wait` instead).
-- Returns {now, wake ms or -1, next seq, last wake id, lease until, deliveries...}, each
-- delivery {seq, attempt, fields...}.
local k = { s = KEYS[1], groups = KEYS[2], next = KEYS[3], lease = KEYS[4], hold = KEYS[5],
  wait = KEYS[6], att = KEYS[7], n = KEYS[8], cur = KEYS[9], dl = KEYS[10], dlnext = KEYS[11],
  wake = KEYS[12] }
local now = ms_now(ARGV[1])
local group = ARGV[2]
local consumer = ARGV[3]
local max = tonumber(ARGV[4])
local lease_ms = tonumber(ARGV[5])
local max_attempts = tonumber(ARGV[6])
local max_bytes = tonumber(ARGV[7])
local in_flight_max = tonumber(ARGV[8])
local chunk = tonumber(ARGV[10])
local err = ensure_group(k, group, tonumber(ARGV[9]), false)
if err then
  return err
end
expire_leases(k, group, now, max_attempts, 1000)

local until_ms = now + lease_ms
local out = {}
local count = 0
local bytes = 0
local in_flight = redis.call('ZCARD', k.lease)
local function room()
  return count < max and bytes < max_bytes and in_flight < in_flight_max
end
-- Leases and attempt counts are written together, in chunks.
local lz, az = {}, {}
local function flush()
  if #lz > 0 then
    redis.call('ZADD', k.lease, unpack(lz))
    redis.call('HSET', k.att, unpack(az))
    lz, az = {}, {}
  end
end
local function hand(seq, attempt, fields)
  local m = mem(seq)
  table.insert(lz, until_ms)
  table.insert(lz, m)
  table.insert(az, m)
  table.insert(az, attempt)
  if #lz >= 1000 then
    flush()
  end
  in_flight = in_flight + 1
  count = count + 1
  bytes = bytes + #(field(fields, 'b') or '')
  local d = { m, str(attempt) }
  for i = 1, #fields do
    table.insert(d, fields[i])
  end
  table.insert(out, d)
end

-- Retries (hold) and fired delays (wait) whose time came.
for _, zs in ipairs({ k.hold, k.wait }) do
  while room() do
    local r = redis.call('ZRANGEBYSCORE', zs, '-inf', now, 'LIMIT', 0, math.min(100, max - count))
    if #r == 0 then
      break
    end
    for _, m in ipairs(r) do
      if not room() then
        break
      end
      redis.call('ZREM', zs, m)
      local seq = tonumber(m)
      local id = sid(seq)
      local e = redis.call('XRANGE', k.s, id, id)
      if #e == 0 then
        redis.call('HINCRBY', k.n, 'lost', 1)
        redis.call('XACK', k.s, group, id)
        redis.call('HDEL', k.att, m)
      else
        local a = tonumber(redis.call('HGET', k.att, m) or '0') + 1
        if a > 1 then
          redis.call('HINCRBY', k.n, 'redeliveries', 1)
        end
        redis.call('XCLAIM', k.s, group, consumer, 0, id, 'RETRYCOUNT', a, 'JUSTID')
        hand(seq, a, e[1][2])
      end
    end
  end
end

-- New entries.
while room() do
  local r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', math.min(max - count, chunk), 'STREAMS', k.s, '>')
  if not r or #r == 0 or #r[1][2] == 0 then
    break
  end
  local batch = r[1][2]
  redis.call('SET', k.cur, str(seq_of(batch[#batch][1]) + 1))
  for _, e in ipairs(batch) do
    local id = e[1]
    local f = e[2]
    local seq = seq_of(id)
    local tg = field(f, 'tg')
    local d = field(f, 'd')
    if tg and tg ~= group then
      -- A replay for another group: done for this one.
      redis.call('XACK', k.s, group, id)
    elseif d and tonumber(d) > now then
      redis.call('ZADD', k.wait, d, mem(seq))
    elseif room() then
      hand(seq, 1, f)
    else
      -- Read but no room left (bytes): ready at once for the next fetch.
      redis.call('ZADD', k.wait, now, mem(seq))
    end
  end
end

flush()

local wake = -1
for _, zs in ipairs({ k.lease, k.hold, k.wait }) do
  local first = redis.call('ZRANGE', zs, 0, 0, 'WITHSCORES')
  if #first > 0 then
    local t = tonumber(first[2])
    if wake < 0 or t < wake then
      wake = t
    end
  end
end
local last_wake = redis.call('XREVRANGE', k.wake, '+', '-', 'COUNT', 1)
local wake_id = '0-0'
if #last_wake > 0 then
  wake_id = last_wake[1][1]
end
local head = { str(now), str(wake), redis.call('GET', k.next) or '0', wake_id, str(until_ms) }
for _, d in ipairs(out) do
  table.insert(head, d)
end
return head
