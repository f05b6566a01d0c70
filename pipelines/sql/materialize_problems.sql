-- What would stop a subset from becoming training shards, counted over `kept` (materialize_keys.sql):
-- keys without a stored image (not in the run, or status not ok), keys WebDataset cannot hold
-- (it splits KEY.EXT at the first dot), and keys the manifest lists more than once.
SELECT
    count(*) AS keys,
    CAST(coalesce(sum(copies), 0) AS BIGINT) AS manifest_rows,
    count(*) FILTER (WHERE copies > 1) AS duplicated_keys,
    count(*) FILTER (WHERE status IS DISTINCT FROM 'ok') AS without_image,
    count(*) FILTER (WHERE key = '' OR contains(key, '.') OR contains(key, '/')) AS unusable_keys,
    (list(key || ' (' || coalesce(status, 'not in the run') || ')' ORDER BY key)
        FILTER (WHERE status IS DISTINCT FROM 'ok'))[1:$examples] AS without_image_examples,
    (list(key ORDER BY key) FILTER (WHERE key = '' OR contains(key, '.') OR contains(key, '/')))[1:$examples]
        AS unusable_examples
FROM kept;
