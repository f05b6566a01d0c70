-- Exact deduplication by the sha256 of the downloaded bytes: one row per hash is kept, the one with
-- the highest CLIP score (rows without one last), then the smallest key. The others are dropped,
-- their detail naming the key that was kept.
-- View: pool (sha256, clip_score). Output: key, reason, detail.
SELECT key, 'exact_duplicate' AS reason, keeper AS detail FROM (
    SELECT key,
           row_number() OVER w AS position,
           first_value(key) OVER w AS keeper
    FROM pool
    WHERE sha256 IS NOT NULL
    WINDOW w AS (PARTITION BY sha256 ORDER BY clip_score DESC NULLS LAST, key)
)
WHERE position > 1
