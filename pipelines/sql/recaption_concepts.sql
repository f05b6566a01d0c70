-- Per concept over the recaptioned rows: mentions in the original (before) and new (after) captions,
-- image tags, and mentions the image confirms. Views: tags(key, before, after, image: concept id lists),
-- concepts(concept_id, concept).
WITH mentions AS (
    SELECT 'before' AS side, key, unnest(before) AS concept_id FROM tags
    UNION ALL SELECT 'after', key, unnest(after) FROM tags
    UNION ALL SELECT 'image', key, unnest(image) FROM tags
),
pairs AS (SELECT DISTINCT side, key, concept_id FROM mentions)
SELECT
    c.concept_id,
    c.concept,
    count(*) FILTER (WHERE p.side = 'before') AS text_before,
    count(*) FILTER (WHERE p.side = 'after') AS text_after,
    count(*) FILTER (WHERE p.side = 'image') AS image,
    count(*) FILTER (WHERE p.side = 'before' AND EXISTS (
        SELECT 1 FROM pairs AS i WHERE i.side = 'image' AND i.key = p.key AND i.concept_id = p.concept_id)) AS matched_before,
    count(*) FILTER (WHERE p.side = 'after' AND EXISTS (
        SELECT 1 FROM pairs AS i WHERE i.side = 'image' AND i.key = p.key AND i.concept_id = p.concept_id)) AS matched_after
FROM concepts AS c
LEFT JOIN pairs AS p USING (concept_id)
GROUP BY c.concept_id, c.concept
ORDER BY c.concept_id;
