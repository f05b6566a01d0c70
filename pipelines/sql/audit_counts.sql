-- Concept-frequency audit: per concept, how many captions name it, how many images show it, and
-- how many rows have both at once (No "Zero-Shot" Without Exponential Data), its rank and tail flag.
--
-- Views:      tags(key VARCHAR, status VARCHAR, text_concepts INTEGER[], text_concepts_bag INTEGER[],
--                  text_variants INTEGER[], image_concepts INTEGER[])     one row per annotation row
--             concepts(concept_id INTEGER, concept VARCHAR)
--             variants(variant_id INTEGER, concept_id INTEGER, variant VARCHAR)   names and synonyms
-- Parameters: $frequency ('text' | 'image' | 'matched': the count that ranks and defines the tail),
--             $tail_fraction (the bottom share of concepts that is the tail, e.g. 0.2),
--             $tail_floor (concepts with frequency below it are tail too; 0: none)
-- Output:     one row per concept, ordered by concept_id:
--             text_count        ok rows whose caption names it (nested rule, see operators/concepts.py)
--             text_count_bag    the same with the paper's pure bag-of-lemmas rule
--             text_count_all    every row with a caption, whatever its download status
--             image_count       ok rows whose image is tagged with it
--             matched_count     ok rows with both
--             frequency, rank (1 = most frequent; ties share a rank), tail,
--             top_synonym, top_synonym_count (the most frequent of its names in captions; ties: first listed)
-- The tail is ties-inclusive: a concept is tail when fewer than ceil($tail_fraction * concepts)
-- concepts are strictly rarer than it, or when its frequency is below $tail_floor.
WITH ok AS (
    SELECT * FROM tags WHERE status = 'ok'
),
text_n AS (
    SELECT c AS concept_id, count(*) AS n FROM (SELECT unnest(text_concepts) AS c FROM ok) GROUP BY c
),
bag_n AS (
    SELECT c AS concept_id, count(*) AS n FROM (SELECT unnest(text_concepts_bag) AS c FROM ok) GROUP BY c
),
all_n AS (
    SELECT c AS concept_id, count(*) AS n FROM (SELECT unnest(text_concepts) AS c FROM tags) GROUP BY c
),
image_n AS (
    SELECT c AS concept_id, count(*) AS n FROM (SELECT unnest(image_concepts) AS c FROM ok) GROUP BY c
),
matched_n AS (
    SELECT c AS concept_id, count(*) AS n
    FROM (SELECT unnest(list_intersect(text_concepts, image_concepts)) AS c FROM ok)
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
SELECT concept_id, concept, text_count, text_count_bag, text_count_all, image_count, matched_count, frequency,
       rank() OVER (ORDER BY frequency DESC) AS rank,
       rank() OVER (ORDER BY frequency ASC) <= ceil($tail_fraction * count(*) OVER ()) OR frequency < $tail_floor
           AS tail,
       top_synonym, top_synonym_count
FROM ranked
ORDER BY concept_id
