-- MetaCLIP 2 balancing for images with several texts (Meta CLIP 2: A Worldwide Scaling Recipe):
-- per image, one text among those that match some entry is picked at random; the image is then
-- kept with that text's MetaCLIP probability 1 - prod(1 - p(e)), p(e) = $t / max(count(e), $t),
-- with the same per-(seed, key, entry) draws as metaclip_balance.sql. Entry counts are over all
-- texts. A kept image keeps the picked text's row; its other texts are 'other_text'.
--
-- The pick is the text whose md5('seed|text|image|key') is smallest: uniform, deterministic.
--
-- Views:      matches(key VARCHAR, image VARCHAR, metaclip_entries INTEGER[])   one row per text;
--                 image NULL means the text is its own image
--             entry_counts(entry_id INTEGER, entry VARCHAR, count BIGINT)
-- Macros:     metaclip_draw_kept (metaclip_draw.sql)
-- Parameters: $t (entry cap, > 0), $seed (integer)
-- Output:     key, kept, reason ('kept' | 'balanced_out' | 'other_text' | 'no_match'), ordered by key
WITH texts AS (
    SELECT key,
           coalesce(image, key) AS image,
           coalesce(list_distinct(metaclip_entries), []) AS entry_ids
    FROM matches
),
picked AS (
    SELECT arg_min(key, md5(CAST($seed AS VARCHAR) || '|text|' || image || '|' || key)) AS key
    FROM texts
    WHERE len(entry_ids) > 0
    GROUP BY image
),
pairs AS (
    SELECT key, unnest(entry_ids) AS entry_id FROM texts WHERE key IN (SELECT key FROM picked)
),
draws AS (
    SELECT pairs.key,
           bool_or(metaclip_draw_kept($seed, pairs.key, c.entry, c.count, $t)) AS drawn
    FROM pairs
    JOIN entry_counts AS c USING (entry_id)
    GROUP BY pairs.key
)
SELECT texts.key,
       coalesce(draws.drawn, false) AS kept,
       CASE WHEN len(texts.entry_ids) = 0 THEN 'no_match'
            WHEN draws.key IS NULL THEN 'other_text'
            WHEN draws.drawn THEN 'kept'
            ELSE 'balanced_out' END AS reason
FROM texts
LEFT JOIN draws USING (key)
ORDER BY texts.key
