-- dead_letters: KEYS = dl, dldone. ARGV = from dead seq, limit, max bytes.
-- Returns pending (not replayed, not discarded) dead letters from that seq on, as XRANGE
-- entries, at most `limit`, stopping once their payloads reach `max bytes`.
local from = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local max_bytes = tonumber(ARGV[3])
local out = {}
local bytes = 0
local start = str(from) .. '-0'
while #out < limit and bytes < max_bytes do
  local batch = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', 100)
  if #batch == 0 then
    break
  end
  for _, e in ipairs(batch) do
    local dseq = seq_of(e[1])
    if redis.call('SISMEMBER', KEYS[2], str(dseq)) == 0 and #out < limit and bytes < max_bytes then
      table.insert(out, e)
      bytes = bytes + #(field(e[2], 'b') or '')
    end
    start = str(dseq + 1) .. '-0'
  end
end
return out
