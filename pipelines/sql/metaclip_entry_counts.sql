-- MetaCLIP entry counts: count(entry) = the number of captions whose match list holds the entry
-- (once per caption, however often the caption repeats it).
--
-- Views:      matches(key VARCHAR, metaclip_entries INTEGER[])   one row per caption
--             entries(entry_id INTEGER, entry VARCHAR)           the metadata the ids refer to
-- Parameters: none
-- Output:     entry_id, entry, count (BIGINT; 0 for entries no caption holds), ordered by entry_id
WITH per_entry AS (
    SELECT entry_id, count(*) AS count
    FROM (SELECT unnest(list_distinct(metaclip_entries)) AS entry_id FROM matches)
    GROUP BY entry_id
)
SELECT e.entry_id, e.entry, coalesce(p.count, 0) AS count
FROM entries AS e
LEFT JOIN per_entry AS p USING (entry_id)
ORDER BY e.entry_id
