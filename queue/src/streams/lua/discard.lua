-- discard_dead_letter: KEYS = dl, dldone. ARGV = dead seq. Marks it resolved.
local dseq = ARGV[1]
local id = dseq .. '-1'
if redis.call('SISMEMBER', KEYS[2], dseq) == 1 then
  return redis.error_reply('QNODEAD no pending dead letter')
end
if #redis.call('XRANGE', KEYS[1], id, id) == 0 then
  return redis.error_reply('QNODEAD no pending dead letter')
end
redis.call('SADD', KEYS[2], dseq)
return 1
