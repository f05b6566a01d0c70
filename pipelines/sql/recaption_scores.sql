-- CLIP score of the new captions against the original alt-texts', over rows that have both.
SELECT
    count(*) AS rows_scored,
    avg(original_clip_score) AS original_mean,
    avg(clip_score) AS new_mean,
    median(original_clip_score) AS original_median,
    median(clip_score) AS new_median,
    avg(CASE WHEN clip_score > original_clip_score THEN 1.0 ELSE 0.0 END) AS share_improved
FROM captions
WHERE status = 'ok' AND clip_score IS NOT NULL AND original_clip_score IS NOT NULL;
