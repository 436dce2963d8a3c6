-- The routing table of a sharded orders database: which shard holds each sale. Only the
-- control shard (the first `--database`) uses it; every shard has it, so all shards share
-- one schema. A route is written when its sale is created and never changes.
CREATE TABLE sale_shards (
    sale  BIGINT  PRIMARY KEY CHECK (sale >= 0),
    shard INTEGER NOT NULL CHECK (shard >= 0)
);
