-- register a topic: KEYS = the registry (topic → partitions). ARGV = topic, partitions,
-- most topics (a topic and its dead-letter topic count as two, as in the engine).
-- Returns the topic's partitions (its own, if it was registered already); one step, so
-- concurrent creators cannot pass the limit together.
local have = redis.call('HGET', KEYS[1], ARGV[1])
if have then
  return tonumber(have)
end
if (redis.call('HLEN', KEYS[1]) + 1) * 2 > tonumber(ARGV[3]) then
  return redis.error_reply('QLIMIT topics')
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return tonumber(ARGV[2])
