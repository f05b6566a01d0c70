-- The subset against the run and the caption set: distinct keys, keys the run does not hold, keys captioned.
WITH keys AS (SELECT DISTINCT key FROM manifest WHERE key IS NOT NULL)
SELECT
    (SELECT count(*) FROM keys) AS keys,
    (SELECT count(*) FROM keys WHERE key NOT IN (SELECT key FROM annotations)) AS not_in_run,
    (SELECT count(*) FROM keys WHERE key IN (SELECT key FROM done)) AS done;
