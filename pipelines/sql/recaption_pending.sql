-- Subset keys still to caption: in the run and not yet in the caption set's parts, each once,
-- ordered so a work item reads one run shard. Views: manifest(key), annotations(key, status, shard), done(key).
SELECT DISTINCT m.key, a.shard
FROM manifest AS m
JOIN annotations AS a USING (key)
WHERE m.key IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM done AS d WHERE d.key = m.key)
ORDER BY a.shard, m.key;
