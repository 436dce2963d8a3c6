-- create_group: KEYS = s, groups, next, cur. ARGV = group, latest (0|1), groups max.
local k = { s = KEYS[1], groups = KEYS[2], next = KEYS[3], cur = KEYS[4] }
local err = ensure_group(k, ARGV[1], tonumber(ARGV[3]), ARGV[2] == '1')
if err then
  return err
end
return 1
