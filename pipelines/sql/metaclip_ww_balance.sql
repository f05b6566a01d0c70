-- Worldwide balancing (Meta CLIP 2: A Worldwide Scaling Recipe, metaclip/curation/curate.py): per
-- image, one of its texts that match some entry is picked at random; the image is kept with that
-- text's probability 1 - prod(1 - p(e)) over its entries e, p(e) = t / max(count(e), t), where count
-- and t are those of the language the text was matched in (thresholds: English's t_en, every other
-- language's derived from English's tail proportion). Entry counts are over all texts.
--
-- The pick and the per-(seed, key, entry) draws are metaclip2_balance.sql's (md5, uniform,
-- deterministic), so with English alone this is metaclip2_balance with t = t_en, and with one text
-- per image metaclip_balance. A language whose t is 0 (its tail proportion nearest p is its zero
-- counts) keeps none of its texts, as 0 / count is in the released code.
--
-- Views:      matches(key VARCHAR, image VARCHAR, lang VARCHAR, metaclip_entries INTEGER[])
--                 one row per text; image NULL means the text is its own image
--             entry_counts(lang VARCHAR, entry_id INTEGER, entry VARCHAR, count BIGINT)
--             thresholds(lang VARCHAR, t DOUBLE)
-- Macros:     metaclip_draw_kept (metaclip_draw.sql)
-- Parameters: $seed (integer)
-- Output:     key, kept, reason ('kept' | 'balanced_out' | 'other_text' | 'no_match'), lang; by key
WITH texts AS (
    SELECT key,
           lang,
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
    SELECT key, lang, unnest(entry_ids) AS entry_id FROM texts WHERE key IN (SELECT key FROM picked)
),
draws AS (
    SELECT pairs.key,
           bool_or(metaclip_draw_kept($seed, pairs.key, c.entry, c.count, th.t)) AS drawn
    FROM pairs
    JOIN entry_counts AS c USING (lang, entry_id)
    JOIN thresholds AS th USING (lang)
    GROUP BY pairs.key
)
SELECT texts.key,
       coalesce(draws.drawn, false) AS kept,
       CASE WHEN len(texts.entry_ids) = 0 THEN 'no_match'
            WHEN draws.key IS NULL THEN 'other_text'
            WHEN draws.drawn THEN 'kept'
            ELSE 'balanced_out' END AS reason,
       texts.lang
FROM texts
LEFT JOIN draws USING (key)
ORDER BY texts.key
