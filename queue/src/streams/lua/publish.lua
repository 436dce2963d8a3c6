-- publish: KEYS = s, next, delays, st, dedup key of each message (unused for no id).
-- ARGV = now, dedup window ms, backlog max messages, backlog max bytes, mode ('batch' |
-- 'each'), count, then per message: id hex ('' = none), headers blob ('' = none),
-- payload, due kind (0 none, 1 at, 2 after), due value.
-- Returns per message {seq, flag}: flag 0 stored, 1 duplicate (seq of the first copy),
-- 2 refused, backlog of messages full, 3 refused, backlog of bytes full ('each' only).
-- A 'batch' that would pass a backlog limit is refused as a whole (QFULL), duplicates not
-- counted. The backlog is what the partition retains: what some group has not finished
-- (maintenance trims the rest). A de-duplication entry holds `<seq>:<expires ms>`: the
-- window is judged by the same clock as everything else; `PX` only frees the memory.
local k = { s = KEYS[1], next = KEYS[2], delays = KEYS[3], st = KEYS[4] }
local now = ms_now(ARGV[1])
local window = tonumber(ARGV[2])
local max_messages = tonumber(ARGV[3])
local max_bytes = tonumber(ARGV[4])
local batch = ARGV[5] == 'batch'
local n = tonumber(ARGV[6])
-- Stored bytes of a message, as the engine counts them (payload plus 64).
local function size(j)
  return #ARGV[6 + (j - 1) * 5 + 3] + 64
end

-- First the duplicates (a repeat of an id inside this call is one too).
local prev = {}
local seen = {}
local first_of = {}
local fresh_count, fresh_bytes = 0, 0
for j = 1, n do
  local idh = ARGV[6 + (j - 1) * 5 + 1]
  if idh ~= '' then
    if seen[idh] then
      prev[j] = seen[idh]
    else
      local v = redis.call('GET', KEYS[4 + j])
      if v then
        local seq, exp = string.match(v, '^(%d+):(%d+)$')
        if seq and tonumber(exp) > now then
          prev[j] = seq
        end
      end
    end
  end
  if not prev[j] then
    fresh_count = fresh_count + 1
    fresh_bytes = fresh_bytes + size(j)
    if idh ~= '' then
      seen[idh] = true
      first_of[idh] = j
    end
  end
end

local len = redis.call('XLEN', k.s)
-- Retained bytes: `cum` counts every byte ever added, `base` those of the entries trimmed
-- (the `c` of the first retained entry, set by maintenance); each entry carries `c`, the
-- count before it.
local cum = tonumber(redis.call('HGET', k.st, 'cum') or '0')
local bytes = cum - tonumber(redis.call('HGET', k.st, 'base') or '0')
if batch and len + fresh_count > max_messages then
  return redis.error_reply('QFULL messages')
end
if batch and bytes + fresh_bytes > max_bytes then
  return redis.error_reply('QFULL bytes')
end

local out = {}
local published, duplicates, added = 0, 0, 0
for j = 1, n do
  local a = 6 + (j - 1) * 5
  local idh = ARGV[a + 1]
  if prev[j] == true then
    -- A repeat of an id first seen in this call: the first copy's seq, if it was stored.
    local first = seen[idh]
    if type(first) == 'number' then
      prev[j] = out[first][1]
    else
      prev[j] = nil
    end
  end
  if prev[j] then
    duplicates = duplicates + 1
    table.insert(out, { prev[j], 1 })
  elseif (not batch) and idh ~= '' and seen[idh] == true and j ~= first_of[idh] then
    -- Its first copy in this call was refused: so is the repeat.
    table.insert(out, { '-1', 2 })
  elseif (not batch) and len >= max_messages then
    table.insert(out, { '-1', 2 })
  elseif (not batch) and bytes + size(j) > max_bytes then
    table.insert(out, { '-1', 3 })
  else
    local seq = redis.call('INCR', k.next) - 1
    local args = { 'XADD', k.s, sid(seq), 'b', ARGV[a + 3], 'c', str(cum + added) }
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
        redis.call('ZADD', k.delays, due, mem(seq))
      end
    end
    redis.call(unpack(args))
    len = len + 1
    bytes = bytes + size(j)
    added = added + size(j)
    if idh ~= '' then
      redis.call('SET', KEYS[4 + j], str(seq) .. ':' .. str(now + window), 'PX', window)
      seen[idh] = j
    end
    published = published + 1
    table.insert(out, { str(seq), 0 })
  end
end
if published > 0 then
  redis.call('HINCRBY', k.st, 'published', published)
  redis.call('HINCRBY', k.st, 'cum', added)
end
if duplicates > 0 then
  redis.call('HINCRBY', k.st, 'duplicates', duplicates)
end
return out
