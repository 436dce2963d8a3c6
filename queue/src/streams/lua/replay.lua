-- replay_dead_letter: KEYS = s, next, dl, dldone, groups, st. ARGV = dead seq.
-- Publishes the dead letter again into its partition for the group that gave up on it
-- (field `tg`: other groups skip it), with new attempts; marks the dead letter resolved.
-- Returns the new seq.
local dseq = ARGV[1]
local id = dseq .. '-1'
if redis.call('SISMEMBER', KEYS[4], dseq) == 1 then
  return redis.error_reply('QNODEAD')
end
local e = redis.call('XRANGE', KEYS[3], id, id)
if #e == 0 then
  return redis.error_reply('QNODEAD')
end
local f = e[1][2]
local group = field(f, 'g')
if redis.call('SISMEMBER', KEYS[5], group) == 0 then
  return redis.error_reply('QNOGROUP ' .. group)
end
local seq = redis.call('INCR', KEYS[2]) - 1
local args = { 'XADD', KEYS[1], sid(seq), 'b', field(f, 'b') or '' }
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
redis.call('SADD', KEYS[4], dseq)
redis.call('HINCRBY', KEYS[6], 'published', 1)
return str(seq)
