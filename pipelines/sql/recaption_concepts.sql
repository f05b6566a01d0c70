-- Per concept over the recaptioned rows: mentions in the original (before) and new (after) captions,
-- image tags, mentions the image confirms, and the pool's tail flag. Views: tags(key, before, after, image:
-- concept id lists; image NULL without embeddings), concepts(concept_id, concept), pool(concept_id, tail).
WITH mentions AS (
    SELECT 'before' AS side, key, unnest(before) AS concept_id FROM tags
    UNION ALL SELECT 'after', key, unnest(after) FROM tags
    UNION ALL SELECT 'image', key, unnest(image) FROM tags
),
pairs AS (SELECT DISTINCT side, key, concept_id FROM mentions),
confirmed AS (
    SELECT t.side, t.key, t.concept_id
    FROM pairs AS t JOIN pairs AS i ON i.side = 'image' AND i.key = t.key AND i.concept_id = t.concept_id
    WHERE t.side IN ('before', 'after')
)
SELECT
    c.concept_id,
    c.concept,
    coalesce(p.tail, false) AS tail,
    (SELECT count(*) FROM pairs AS m WHERE m.side = 'before' AND m.concept_id = c.concept_id) AS text_before,
    (SELECT count(*) FROM pairs AS m WHERE m.side = 'after' AND m.concept_id = c.concept_id) AS text_after,
    (SELECT count(*) FROM pairs AS m WHERE m.side = 'image' AND m.concept_id = c.concept_id) AS image,
    (SELECT count(*) FROM confirmed AS m WHERE m.side = 'before' AND m.concept_id = c.concept_id) AS matched_before,
    (SELECT count(*) FROM confirmed AS m WHERE m.side = 'after' AND m.concept_id = c.concept_id) AS matched_after
FROM concepts AS c
LEFT JOIN pool AS p USING (concept_id)
ORDER BY c.concept_id;
