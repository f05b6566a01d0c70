-- The subset's keys, each once, with the annotation it names (status and the run shard holding it).
-- Views: manifest(key), annotations(key, status, shard). `copies` counts a key's manifest rows;
-- status and shard are NULL for a key that is not in the run.
CREATE OR REPLACE TEMP TABLE kept AS
SELECT m.key, m.copies, a.status, a.shard
FROM (SELECT key, count(*) AS copies FROM manifest WHERE key IS NOT NULL GROUP BY key) AS m
LEFT JOIN annotations AS a USING (key);
