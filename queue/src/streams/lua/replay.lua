-- replay_dead_letter: KEYS = s, next, dl, dldone, groups, st, then the read position of
-- each group named in ARGV. ARGV = dead seq, then the partition's groups.
-- Publishes the dead letter again into its partition for the group that gave up on it
-- (field `tg`: other groups skip it), with new attempts; marks the dead letter resolved.
-- Another group that had read everything before it moves past it at once, so it never
-- counts in that group's lag.
-- Returns the new seq.
local dseq = ARGV[1]
local id = dseq .. '-1'
if redis.call('SISMEMBER', KEYS[4], dseq) == 1 then
  return redis.error_reply('QNODEAD no pending dead letter')
end
local e = redis.call('XRANGE', KEYS[3], id, id)
if #e == 0 then
  return redis.error_reply('QNODEAD no pending dead letter')
end
local f = e[1][2]
local group = field(f, 'g')
if redis.call('SISMEMBER', KEYS[5], group) == 0 then
  return redis.error_reply('QNOGROUP ' .. group)
end
local seq = redis.call('INCR', KEYS[2]) - 1
local payload = field(f, 'b') or ''
local cum = tonumber(redis.call('HGET', KEYS[6], 'cum') or '0')
local args = { 'XADD', KEYS[1], sid(seq), 'b', payload, 'c', str(cum) }
for _, name in ipairs({ 'h', 'i' }) do
  local v = field(f, name)
  if v then
    table.insert(args, name)
    table.insert(args, v)
  end
end
table.insert(args, 'tg')
table.insert(args, group)
redis.call(unpack(args))
for j = 2, #ARGV do
  local other = ARGV[j]
  local cur = KEYS[5 + j]
  if other ~= group and tonumber(redis.call('GET', cur) or '0') == seq then
    redis.call('XGROUP', 'SETID', KEYS[1], other, sid(seq))
    redis.call('SET', cur, str(seq + 1))
  end
end
redis.call('SADD', KEYS[4], dseq)
redis.call('HINCRBY', KEYS[6], 'published', 1)
redis.call('HINCRBY', KEYS[6], 'cum', #payload + 64)
return str(seq)
