-- Per-entry statistics of a MetaCLIP balancing: how many captions held each entry before, and
-- how many kept captions hold it after. An entry is 'head' when count > $t (it gets sampled),
-- 'tail' otherwise (all of its captions are kept).
--
-- Views:      matches(key VARCHAR, metaclip_entries INTEGER[])
--             entry_counts(entry_id INTEGER, entry VARCHAR, count BIGINT)
--             decisions(key VARCHAR, kept BOOLEAN)
-- Parameters: $t (entry cap, > 0)
-- Output:     entry_id, entry, count, kept_count, head (BOOLEAN), p (DOUBLE), ordered by entry_id
WITH kept_per_entry AS (
    SELECT entry_id, count(*) AS kept_count
    FROM (
        SELECT unnest(list_distinct(matches.metaclip_entries)) AS entry_id
        FROM matches
        JOIN decisions USING (key)
        WHERE decisions.kept
    )
    GROUP BY entry_id
)
SELECT c.entry_id,
       c.entry,
       c.count,
       coalesce(k.kept_count, 0) AS kept_count,
       c.count > $t AS head,
       $t / greatest(c.count, $t) AS p
FROM entry_counts AS c
LEFT JOIN kept_per_entry AS k USING (entry_id)
ORDER BY c.entry_id
