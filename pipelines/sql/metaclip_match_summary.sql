-- Totals of a metadata matching: captions, captions with at least one matched entry, and the
-- (caption, entry) pairs.
--
-- Views:      matches(key VARCHAR, metaclip_entries INTEGER[])
-- Parameters: none
-- Output:     one row: rows, rows_matched, matches
SELECT count(*) AS rows,
       count(*) FILTER (WHERE len(metaclip_entries) > 0) AS rows_matched,
       coalesce(sum(len(list_distinct(metaclip_entries))), 0)::BIGINT AS matches
FROM matches
