-- Concept-frequency audit: per concept, how many caption rows name it, how many distinct images show
-- it, and how many images both show it and are named so by a caption (No "Zero-Shot" Without
-- Exponential Data), its rank and tail flag.
--
-- Units: a caption row is one annotation row (an image-text pair). "ok" rows are those whose image
-- came through, and on a text pass (annotate --text-only) every row: nothing has ruled its image out yet.
-- An image is one distinct coalesce(sha256, key) among ok rows: COCO has five caption rows per photo,
-- and the same web image can sit under several URLs; each counts once in the image counts. A run where
-- no row has status 'ok' (a text pass: nothing fetched yet) holds no image: its text_image_count is NULL.
--
-- Views:      tags(key VARCHAR, status VARCHAR, sha256 VARCHAR, text_concepts INTEGER[],
--                  text_concepts_bag INTEGER[], text_variants INTEGER[], image_concepts INTEGER[])
--                  one row per annotation row
--             concepts(concept_id INTEGER, concept VARCHAR)
--             variants(variant_id INTEGER, concept_id INTEGER, variant VARCHAR)   names and synonyms
-- Parameters: $frequency ('text' | 'image' | 'matched': the count that ranks and defines the tail),
--             $tail_fraction (the bottom share of concepts that is the tail, e.g. 0.2),
--             $tail_floor (concepts with frequency below it are tail too; 0: none)
-- Output:     one row per concept, ordered by concept_id:
--             text_count        ok caption rows naming it (nested rule, see operators/concepts.py)
--             text_count_bag    the same with the paper's pure bag-of-words rule (caption rows)
--             text_count_all    caption rows naming it, whatever their download status
--             text_image_count  ok images with at least one caption row naming it (NULL without any image)
--             image_count       ok images tagged with it (by any of their rows)
--             matched_count     ok images tagged with it and named so by at least one of their caption rows
--             frequency (text: caption rows; image, matched: images), rank (1 = most frequent; ties
--             share a rank), tail,
--             top_synonym, top_synonym_count (the most frequent of its names in caption rows; ties: first listed)
-- The tail is taken among the mentioned concepts (frequency > 0); a concept never mentioned is not tail
-- but never mentioned (frequency 0), reported on its own: on 10k alt-texts most of ImageNet's 1,000 classes
-- are, and ties at zero would otherwise make them all "the bottom 20%". A mentioned concept is tail when
-- fewer than ceil($tail_fraction * mentioned concepts) mentioned concepts are strictly rarer than it (ties
-- included), or when its frequency is below $tail_floor.
WITH ok AS (
    SELECT *, coalesce(sha256, key) AS image FROM tags WHERE status IN ('ok', 'not_fetched')
),
text_n AS (
    SELECT c AS concept_id, count(*) AS n, count(DISTINCT image) AS images
    FROM (SELECT unnest(text_concepts) AS c, image FROM ok) GROUP BY c
),
bag_n AS (
    SELECT c AS concept_id, count(*) AS n FROM (SELECT unnest(text_concepts_bag) AS c FROM ok) GROUP BY c
),
all_n AS (
    SELECT c AS concept_id, count(*) AS n FROM (SELECT unnest(text_concepts) AS c FROM tags) GROUP BY c
),
image_n AS (
    SELECT c AS concept_id, count(DISTINCT image) AS n
    FROM (SELECT unnest(image_concepts) AS c, image FROM ok) GROUP BY c
),
matched_n AS (
    SELECT c AS concept_id, count(DISTINCT image) AS n
    FROM (SELECT unnest(list_intersect(text_concepts, image_concepts)) AS c, image FROM ok)
    GROUP BY c
),
variant_n AS (
    SELECT v AS variant_id, count(*) AS n FROM (SELECT unnest(text_variants) AS v FROM ok) GROUP BY v
),
top_synonym AS (
    SELECT concept_id, variant AS top_synonym, n AS top_synonym_count
    FROM (
        SELECT v.concept_id, v.variant, coalesce(vn.n, 0) AS n,
               row_number() OVER (PARTITION BY v.concept_id ORDER BY coalesce(vn.n, 0) DESC, v.variant_id) AS pick
        FROM variants AS v LEFT JOIN variant_n AS vn USING (variant_id)
    )
    WHERE pick = 1
),
counts AS (
    SELECT c.concept_id,
           c.concept,
           coalesce(t.n, 0) AS text_count,
           coalesce(b.n, 0) AS text_count_bag,
           coalesce(a.n, 0) AS text_count_all,
           CASE WHEN EXISTS (SELECT 1 FROM tags WHERE status = 'ok') THEN coalesce(t.images, 0) END
               AS text_image_count,
           coalesce(i.n, 0) AS image_count,
           coalesce(m.n, 0) AS matched_count,
           s.top_synonym,
           s.top_synonym_count
    FROM concepts AS c
    LEFT JOIN text_n AS t USING (concept_id)
    LEFT JOIN bag_n AS b USING (concept_id)
    LEFT JOIN all_n AS a USING (concept_id)
    LEFT JOIN image_n AS i USING (concept_id)
    LEFT JOIN matched_n AS m USING (concept_id)
    LEFT JOIN top_synonym AS s USING (concept_id)
),
ranked AS (
    SELECT *,
           CASE $frequency WHEN 'text' THEN text_count WHEN 'image' THEN image_count ELSE matched_count END
               AS frequency
    FROM counts
)
SELECT concept_id, concept, text_count, text_count_bag, text_count_all, text_image_count, image_count,
       matched_count, frequency,
       rank() OVER (ORDER BY frequency DESC) AS rank,
       frequency > 0 AND (
           rank() OVER (PARTITION BY frequency > 0 ORDER BY frequency ASC)
               <= ceil($tail_fraction * count(*) FILTER (WHERE frequency > 0) OVER ())
           OR frequency < $tail_floor) AS tail,
       top_synonym, top_synonym_count
FROM ranked
ORDER BY concept_id
