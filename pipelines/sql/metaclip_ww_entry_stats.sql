-- Per-entry statistics of a worldwide balancing: per (language, entry), the captions holding it
-- before and the kept captions holding it after; the language's t; head when count > t; p, the
-- entry's probability t / max(count, t) (0 where t is 0, NULL where the language has no t: nothing
-- of it matched).
--
-- Views:      matches(key VARCHAR, lang VARCHAR, metaclip_entries INTEGER[])
--             entry_counts(lang VARCHAR, entry_id INTEGER, entry VARCHAR, count BIGINT)
--             thresholds(lang VARCHAR, t DOUBLE)
--             decisions(key VARCHAR, kept BOOLEAN)
-- Parameters: none
-- Output:     lang, entry_id, entry, count, kept_count, t, head (BOOLEAN), p (DOUBLE); by lang, entry_id
WITH kept_per_entry AS (
    SELECT lang, entry_id, count(*) AS kept_count
    FROM (
        SELECT matches.lang, unnest(list_distinct(matches.metaclip_entries)) AS entry_id
        FROM matches
        JOIN decisions USING (key)
        WHERE decisions.kept
    )
    GROUP BY lang, entry_id
)
SELECT c.lang,
       c.entry_id,
       c.entry,
       c.count,
       coalesce(k.kept_count, 0) AS kept_count,
       th.t,
       coalesce(c.count > th.t, false) AS head,
       CASE WHEN th.t IS NULL THEN NULL
            WHEN th.t = 0 THEN 0.0
            ELSE th.t / greatest(c.count, th.t) END AS p
FROM entry_counts AS c
LEFT JOIN thresholds AS th USING (lang)
LEFT JOIN kept_per_entry AS k USING (lang, entry_id)
ORDER BY c.lang, c.entry_id
