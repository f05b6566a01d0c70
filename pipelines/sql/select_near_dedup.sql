-- Near-duplicate removal: one row per connected component of near-identical pHashes (from
-- select_near_dedup_edges + _propagate) is kept, the one with the highest CLIP score (rows without
-- one last), then the smallest key; rows sharing a hash with no neighbour form their own group.
-- As with any single-linkage grouping, a chain a~b~c puts a and c together even when they are
-- further apart than the distance.
-- View: pool (phash, clip_score); table near_labels (node, label). Output: key, reason, detail.
WITH grouped AS (
    SELECT p.key, p.clip_score, coalesce(l.label, p.phash) AS component
    FROM pool AS p LEFT JOIN near_labels AS l ON l.node = p.phash
    WHERE p.phash IS NOT NULL
)
SELECT key, 'near_duplicate' AS reason, keeper AS detail FROM (
    SELECT key, row_number() OVER w AS position, first_value(key) OVER w AS keeper
    FROM grouped
    WINDOW w AS (PARTITION BY component ORDER BY clip_score DESC NULLS LAST, key)
)
WHERE position > 1
