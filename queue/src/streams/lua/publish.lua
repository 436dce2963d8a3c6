-- publish: KEYS = s, next, delays, st, dedup key of each message (unused for no id).
-- A de-duplication entry lives for the window by the script's clock (see below).
-- ARGV = now, dedup window ms, backlog max, mode ('batch' | 'each'), count, then per
-- message: id hex ('' = none), headers blob ('' = none), payload, due kind (0 none,
-- 1 at, 2 after), due value.
-- Returns per message {seq, flag}: flag 0 stored, 1 duplicate (seq of the first copy),
-- 2 refused as full ('each' only). A full 'batch' is refused as a whole (QFULL).
local k = { s = KEYS[1], next = KEYS[2], delays = KEYS[3], st = KEYS[4] }
local now = ms_now(ARGV[1])
local window = tonumber(ARGV[2])
local backlog_max = tonumber(ARGV[3])
local batch = ARGV[4] == 'batch'
local n = tonumber(ARGV[5])
local len = redis.call('XLEN', k.s)
if batch and len + n > backlog_max then
  return redis.error_reply('QFULL messages ' .. str(backlog_max))
end
local out = {}
local published, duplicates = 0, 0
for j = 1, n do
  local a = 5 + (j - 1) * 5
  local idh = ARGV[a + 1]
  local dkey = KEYS[4 + j]
  -- The entry holds `<seq>:<expires ms>`: the window is judged by the same clock as
  -- everything else; `PX` only lets Redis reclaim the memory afterwards.
  local prev = false
  if idh ~= '' then
    local v = redis.call('GET', dkey)
    if v then
      local seq, exp = string.match(v, '^(%d+):(%d+)$')
      if seq and tonumber(exp) > now then
        prev = seq
      end
    end
  end
  if prev then
    duplicates = duplicates + 1
    table.insert(out, { prev, 1 })
  elseif (not batch) and len >= backlog_max then
    table.insert(out, { '-1', 2 })
  else
    local seq = redis.call('INCR', k.next) - 1
    local args = { 'XADD', k.s, sid(seq), 'b', ARGV[a + 3] }
    if ARGV[a + 2] ~= '' then
      table.insert(args, 'h')
      table.insert(args, ARGV[a + 2])
    end
    if idh ~= '' then
      table.insert(args, 'i')
      table.insert(args, idh)
    end
    local dk = tonumber(ARGV[a + 4])
    local due = nil
    if dk == 1 then
      due = tonumber(ARGV[a + 5])
    elseif dk == 2 then
      due = now + tonumber(ARGV[a + 5])
    end
    if due then
      table.insert(args, 'd')
      table.insert(args, str(due))
      if due > now then
        redis.call('ZADD', k.delays, due, str(seq))
      end
    end
    redis.call(unpack(args))
    len = len + 1
    if idh ~= '' then
      redis.call('SET', dkey, str(seq) .. ':' .. str(now + window), 'PX', window)
    end
    published = published + 1
    table.insert(out, { str(seq), 0 })
  end
end
if published > 0 then
  redis.call('HINCRBY', k.st, 'published', published)
end
if duplicates > 0 then
  redis.call('HINCRBY', k.st, 'duplicates', duplicates)
end
return out
