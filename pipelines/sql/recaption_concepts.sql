-- Per concept over the recaptioned rows: mentions in the original (before) and new (after) captions, the
-- images they name, image tags, images whose tags confirm a caption, and the pool's tail flag.
-- Units as in the audit (audit_counts.sql): text_* count caption rows; named_*, image and matched_* count
-- images, one distinct coalesce(sha256, key) each, so a photo under five recaptioned keys counts once.
-- Views: tags(key, sha256, before, after, image: concept id lists; image NULL without embeddings),
-- concepts(concept_id, concept), pool(concept_id, tail).
-- Output: concept_id, concept, tail, text_before, text_after (caption rows naming it), named_before,
-- named_after (images a caption row of which names it), image (images tagged with it), matched_before,
-- matched_after (images tagged with it and named so by one of their caption rows, old or new).
WITH rows AS (SELECT *, coalesce(sha256, key) AS img FROM tags),
mentions AS (
    SELECT 'before' AS side, key, img, unnest(before) AS concept_id FROM rows
    UNION ALL SELECT 'after', key, img, unnest(after) FROM rows
    UNION ALL SELECT 'image', key, img, unnest(image) FROM rows
),
pairs AS (SELECT DISTINCT side, key, img, concept_id FROM mentions),
per_image AS (SELECT DISTINCT side, img, concept_id FROM pairs),
confirmed AS (
    SELECT t.side, t.img, t.concept_id
    FROM per_image AS t JOIN per_image AS i ON i.side = 'image' AND i.img = t.img AND i.concept_id = t.concept_id
    WHERE t.side IN ('before', 'after')
),
n_rows AS (SELECT side, concept_id, count(*) AS n FROM pairs WHERE side <> 'image' GROUP BY ALL),
n_images AS (SELECT side, concept_id, count(*) AS n FROM per_image GROUP BY ALL),
n_confirmed AS (SELECT side, concept_id, count(*) AS n FROM confirmed GROUP BY ALL)
SELECT
    c.concept_id,
    c.concept,
    coalesce(p.tail, false) AS tail,
    coalesce((SELECT n FROM n_rows AS m WHERE m.side = 'before' AND m.concept_id = c.concept_id), 0) AS text_before,
    coalesce((SELECT n FROM n_rows AS m WHERE m.side = 'after' AND m.concept_id = c.concept_id), 0) AS text_after,
    coalesce((SELECT n FROM n_images AS m WHERE m.side = 'before' AND m.concept_id = c.concept_id), 0) AS named_before,
    coalesce((SELECT n FROM n_images AS m WHERE m.side = 'after' AND m.concept_id = c.concept_id), 0) AS named_after,
    coalesce((SELECT n FROM n_images AS m WHERE m.side = 'image' AND m.concept_id = c.concept_id), 0) AS image,
    coalesce((SELECT n FROM n_confirmed AS m WHERE m.side = 'before' AND m.concept_id = c.concept_id), 0)
        AS matched_before,
    coalesce((SELECT n FROM n_confirmed AS m WHERE m.side = 'after' AND m.concept_id = c.concept_id), 0)
        AS matched_after
FROM concepts AS c
LEFT JOIN pool AS p USING (concept_id)
ORDER BY c.concept_id;
