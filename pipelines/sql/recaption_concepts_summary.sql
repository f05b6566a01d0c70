-- Alignment and tail coverage before and after recaptioning: how far the images the captions name are from
-- the image tags (L1, per concept, in images), (image, concept) pairs whose tags confirm a caption, concepts
-- named at all, tail concepts named and their mentions (caption rows), and rows whose caption names no
-- concept. Views: per_concept (recaption_concepts.sql), tags.
SELECT
    (SELECT count(*) FROM tags) AS rows,
    (SELECT count(DISTINCT coalesce(sha256, key)) FROM tags) AS images,
    (SELECT count(*) FROM tags WHERE image IS NOT NULL) AS rows_with_image_tags,
    CASE WHEN (SELECT count(*) FROM tags WHERE image IS NOT NULL) > 0
         THEN sum(abs(named_before - image))::BIGINT END AS l1_to_image_before,
    CASE WHEN (SELECT count(*) FROM tags WHERE image IS NOT NULL) > 0
         THEN sum(abs(named_after - image))::BIGINT END AS l1_to_image_after,
    sum(matched_before)::BIGINT AS matched_before,
    sum(matched_after)::BIGINT AS matched_after,
    count(*) FILTER (WHERE text_before > 0) AS concepts_named_before,
    count(*) FILTER (WHERE text_after > 0) AS concepts_named_after,
    count(*) FILTER (WHERE tail AND text_before > 0) AS tail_concepts_named_before,
    count(*) FILTER (WHERE tail AND text_after > 0) AS tail_concepts_named_after,
    coalesce(sum(text_before) FILTER (WHERE tail), 0)::BIGINT AS tail_mentions_before,
    coalesce(sum(text_after) FILTER (WHERE tail), 0)::BIGINT AS tail_mentions_after,
    (SELECT avg(CASE WHEN len(before) = 0 THEN 1.0 ELSE 0.0 END) FROM tags) AS share_naming_nothing_before,
    (SELECT avg(CASE WHEN len(after) = 0 THEN 1.0 ELSE 0.0 END) FROM tags) AS share_naming_nothing_after
FROM per_concept;
