-- select, implicit first step: only rows whose image was downloaded and decoded can be trained on.
-- View: pool. Output: key, reason ('status_' || status), detail (the row's error text).
SELECT key, 'status_' || status AS reason, error AS detail
FROM pool
WHERE status IS DISTINCT FROM 'ok'
