-- CLIP score, absolute threshold (LAION-5B: cosine >= 0.28 with ViT-B/32): keep pairs scoring at
-- least $min_score; rows without a score (no embedding) are dropped as such.
-- View: pool (clip_score). Parameters: $min_score. Output: key, reason, detail.
SELECT key,
       CASE WHEN clip_score IS NULL THEN 'no_clip_score' ELSE 'clip_score_below_threshold' END AS reason,
       CAST(round(clip_score, 4) AS VARCHAR) AS detail
FROM pool
WHERE clip_score IS NULL OR clip_score < $min_score
