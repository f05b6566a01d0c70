-- tailor browse, duplicates: exact groups are ok rows sharing a sha256 (two or more rows); the member kept
-- is the one select's exact_dedup keeps: the highest CLIP score (rows without one last), then the smallest key.
-- View: ann (key, status, sha256, clip_score over every annotation file). Output: keeper, key, kept.
SELECT keeper, key, key = keeper AS kept FROM (
    SELECT key, first_value(key) OVER w AS keeper, count(*) OVER (PARTITION BY sha256) AS members
    FROM ann
    WHERE status = 'ok' AND sha256 IS NOT NULL
    WINDOW w AS (PARTITION BY sha256 ORDER BY clip_score DESC NULLS LAST, key)
)
WHERE members > 1
ORDER BY keeper, kept DESC, key
