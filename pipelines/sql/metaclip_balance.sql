-- MetaCLIP balancing (Demystifying CLIP Data, Algorithm 1): an entry matched by more than $t
-- captions keeps each of them with probability p = $t / count, so head entries are capped at
-- about $t captions and tail entries (count <= $t, p = 1) keep all of theirs. A caption with
-- matched entries E is kept when any of its independent per-entry draws succeeds, that is with
-- probability 1 - prod(1 - p(e)); a caption that matches nothing is not curated.
--
-- The draw for (seed, key, entry) is the first 52 bits of md5('seed|key|entry') as a number
-- in [0, 1): the same on every engine, thread count and machine, and reproducible outside SQL.
--
-- Views:      matches(key VARCHAR, metaclip_entries INTEGER[])   one row per caption, unique keys
--             entry_counts(entry_id INTEGER, entry VARCHAR, count BIGINT)
-- Macros:     metaclip_draw_kept (metaclip_draw.sql)
-- Parameters: $t (entry cap, > 0), $seed (integer)
-- Output:     key, kept (BOOLEAN), reason ('kept' | 'balanced_out' | 'no_match'), ordered by key
WITH captions AS (
    SELECT key, coalesce(list_distinct(metaclip_entries), []) AS entry_ids FROM matches
),
pairs AS (
    SELECT key, unnest(entry_ids) AS entry_id FROM captions
),
draws AS (
    SELECT pairs.key,
           bool_or(metaclip_draw_kept($seed, pairs.key, c.entry, c.count, $t)) AS drawn
    FROM pairs
    JOIN entry_counts AS c USING (entry_id)
    GROUP BY pairs.key
)
SELECT captions.key,
       coalesce(draws.drawn, false) AS kept,
       CASE WHEN len(captions.entry_ids) = 0 THEN 'no_match'
            WHEN draws.drawn THEN 'kept'
            ELSE 'balanced_out' END AS reason
FROM captions
LEFT JOIN draws USING (key)
ORDER BY captions.key
