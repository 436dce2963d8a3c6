-- dead_letters: KEYS = dl, dldone. ARGV = from dead seq, limit, max bytes, scan max.
-- Returns pending (not replayed, not discarded) dead letters from that seq on, as XRANGE
-- entries, at most `limit`, stopping once their payloads reach `max bytes` or after
-- looking at `scan max` entries (resolved ones behind a pending one are skipped).
local from = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local max_bytes = tonumber(ARGV[3])
local scan_left = tonumber(ARGV[4])
local out = {}
local bytes = 0
local start = str(from) .. '-0'
while #out < limit and bytes < max_bytes and scan_left > 0 do
  local batch = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', math.min(100, scan_left))
  scan_left = scan_left - #batch
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
