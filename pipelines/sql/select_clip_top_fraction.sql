-- CLIP score, top fraction (DataComp "CLIP score top 30%"): over the pool's scored rows sorted by
-- score, descending, the threshold is the score at 0-based rank floor(N * $fraction) (the last one
-- when that is past the end), and rows scoring at least the threshold are kept, as DataComp's
-- baselines do. Rows without a score are dropped as such.
-- View: pool (clip_score). Parameters: $fraction in (0, 1]. Output: key, reason, detail.
WITH scored AS (
    SELECT clip_score FROM pool WHERE clip_score IS NOT NULL
),
ranked AS (
    SELECT clip_score, row_number() OVER (ORDER BY clip_score DESC) - 1 AS rank, count(*) OVER () AS n
    FROM scored
),
threshold AS (
    SELECT coalesce(max(clip_score), 'Infinity'::DOUBLE) AS t
    FROM ranked
    WHERE rank = least(floor(n * $fraction), n - 1)
)
SELECT key,
       CASE WHEN clip_score IS NULL THEN 'no_clip_score' ELSE 'clip_score_below_top_fraction' END AS reason,
       CAST(round(clip_score, 4) AS VARCHAR) || ' < ' || CAST(round((SELECT t FROM threshold), 4) AS VARCHAR) AS detail
FROM pool
WHERE clip_score IS NULL OR clip_score < (SELECT t FROM threshold)
