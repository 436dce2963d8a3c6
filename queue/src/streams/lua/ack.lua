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
local ids, members_done, held = {}, {}, {}
local acked = 0
local function flush()
  if #ids > 0 then
    redis.call('XACK', k.s, group, unpack(ids))
    redis.call('ZREM', k.lease, unpack(members_done))
    redis.call('HDEL', k.att, unpack(members_done))
    ids, members_done = {}, {}
  end
  if #held > 0 then
    redis.call('ZREM', k.hold, unpack(held))
    held = {}
  end
end
-- Two receipts for one seq in a call: the second sees the first's effect. Lookups go in
-- chunks: one ZMSCORE per set and one HMGET of the attempts for up to 500 receipts.
local done_here = {}
local total = (#ARGV - 1) / 2
for c = 1, total, 500 do
  local last = math.min(c + 499, total)
  local members = {}
  for i = c, last do
    table.insert(members, mem(tonumber(ARGV[2 * i])))
  end
  local leased = redis.call('ZMSCORE', k.lease, unpack(members))
  local held_now = redis.call('ZMSCORE', k.hold, unpack(members))
  local atts = redis.call('HMGET', k.att, unpack(members))
  for i = c, last do
    local r = i - c + 1
    local seq = tonumber(ARGV[2 * i])
    local attempt = tonumber(ARGV[2 * i + 1])
    local m = members[r]
    local o
    if seq >= nxt then
      o = 3
    elseif done_here[m] then
      o = 1
    elseif leased[r] or held_now[r] then
      local a = tonumber(atts[r] or '0')
      if attempt >= 1 and a == attempt then
        table.insert(ids, sid(seq))
        table.insert(members_done, m)
        if held_now[r] then
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
    table.insert(out, o)
  end
end
flush()
if acked > 0 then
  redis.call('HINCRBY', k.n, 'acked', acked)
end
return out
