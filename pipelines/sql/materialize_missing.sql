-- Subset keys without a stored image, per reason (a status other than ok, or not in the run).
SELECT coalesce(status, 'not in the run') AS reason, count(*) AS keys
FROM kept
WHERE status IS DISTINCT FROM 'ok'
GROUP BY reason
ORDER BY keys DESC, reason;
