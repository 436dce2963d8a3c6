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
-- Decided in passes (duplicates, then what is stored), so that the writes are one INCRBY
-- and one XADD per stored message.
local k = { s = KEYS[1], next = KEYS[2], delays = KEYS[3], st = KEYS[4] }
local now_v = nil
local function now()
  if not now_v then
    now_v = ms_now(ARGV[1])
  end
  return now_v
end
local window = tonumber(ARGV[2])
local max_messages = tonumber(ARGV[3])
local max_bytes = tonumber(ARGV[4])
local batch = ARGV[5] == 'batch'
local n = tonumber(ARGV[6])
local function arg(j, i)
  return ARGV[6 + (j - 1) * 5 + i]
end
-- Stored bytes of a message, as the engine counts them (payload plus 64).
local function size(j)
  return #arg(j, 3) + 64
end

-- Pass 1: duplicates, read with MGET in chunks. `first_of[id]` is the first index of an id
-- in this call; a later copy repeats it.
local prev = {}
local first_of = {}
local ids, idx = {}, {}
for j = 1, n do
  local idh = arg(j, 1)
  if idh ~= '' then
    if first_of[idh] then
      prev[j] = first_of[idh]
    else
      first_of[idh] = j
      table.insert(ids, KEYS[4 + j])
      table.insert(idx, j)
    end
  end
end
for c = 1, #ids, 500 do
  local part = {}
  for i = c, math.min(c + 499, #ids) do
    table.insert(part, ids[i])
  end
  local got = redis.call('MGET', unpack(part))
  for i, v in ipairs(got) do
    if v then
      local seq, exp = string.match(v, '^(%d+):(%d+)$')
      if seq and tonumber(exp) > now() then
        prev[idx[c + i - 1]] = seq
      end
    end
  end
end

-- Pass 2: what is stored. 0 stored, 1 duplicate, 2/3 refused.
local len = redis.call('XLEN', k.s)
-- Retained bytes: `cum` counts every byte ever added, `base` those of the entries trimmed
-- (the `c` of the first retained entry, set by maintenance); each entry carries `c`, the
-- count before it.
local st = redis.call('HMGET', k.st, 'cum', 'base')
local cum = tonumber(st[1] or '0')
local bytes = cum - tonumber(st[2] or '0')
local flag = {}
local fresh, fresh_bytes = 0, 0
for j = 1, n do
  local p = prev[j]
  if type(p) == 'number' then
    -- A repeat of an id first seen in this call: as its first copy went.
    if flag[p] == 0 or flag[p] == 1 then
      flag[j] = 1
    else
      flag[j] = flag[p]
    end
  elseif p then
    flag[j] = 1
  elseif (not batch) and len + fresh >= max_messages then
    flag[j] = 2
  elseif (not batch) and bytes + fresh_bytes + size(j) > max_bytes then
    flag[j] = 3
  else
    flag[j] = 0
    fresh = fresh + 1
    fresh_bytes = fresh_bytes + size(j)
  end
end
if batch and len + fresh > max_messages then
  return redis.error_reply('QFULL messages')
end
if batch and bytes + fresh_bytes > max_bytes then
  return redis.error_reply('QFULL bytes')
end

-- Pass 3: the writes.
local seq = 0
if fresh > 0 then
  seq = redis.call('INCRBY', k.next, fresh) - fresh
end
local out = {}
local seqs = {}
local added, duplicates = 0, 0
for j = 1, n do
  local f = flag[j]
  if f == 0 then
    local idh = arg(j, 1)
    local dk = tonumber(arg(j, 4))
    local c = str(cum + added)
    if idh == '' and dk == 0 and arg(j, 2) == '' then
      redis.call('XADD', k.s, sid(seq), 'b', arg(j, 3), 'c', c)
    else
      local args = { 'XADD', k.s, sid(seq), 'b', arg(j, 3), 'c', c }
      if arg(j, 2) ~= '' then
        table.insert(args, 'h')
        table.insert(args, arg(j, 2))
      end
      if idh ~= '' then
        table.insert(args, 'i')
        table.insert(args, idh)
      end
      local due = nil
      if dk == 1 then
        due = tonumber(arg(j, 5))
      elseif dk == 2 then
        due = now() + tonumber(arg(j, 5))
      end
      if due then
        table.insert(args, 'd')
        table.insert(args, str(due))
        if due > now() then
          redis.call('ZADD', k.delays, due, mem(seq))
        end
      end
      redis.call(unpack(args))
      if idh ~= '' then
        redis.call('SET', KEYS[4 + j], str(seq) .. ':' .. str(now() + window), 'PX', window)
      end
    end
    added = added + size(j)
    seqs[j] = str(seq)
    table.insert(out, { seqs[j], 0 })
    seq = seq + 1
  elseif f == 1 then
    duplicates = duplicates + 1
    local p = prev[j]
    if type(p) == 'number' then
      -- The first copy in this call: stored now, or itself a duplicate of an older one.
      p = seqs[p] or prev[p]
    end
    table.insert(out, { p, 1 })
  else
    table.insert(out, { '-1', f })
  end
end
if fresh > 0 then
  redis.call('HINCRBY', k.st, 'published', fresh)
  redis.call('HINCRBY', k.st, 'cum', added)
end
if duplicates > 0 then
  redis.call('HINCRBY', k.st, 'duplicates', duplicates)
end
return out
