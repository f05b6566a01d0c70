-- The samples of the training shards in their order (by key, byte order): key and the run shard
-- holding its image. The driver streams this and cuts it every samples_per_shard rows.
SELECT key, shard
FROM kept
WHERE status = 'ok'
ORDER BY key;
