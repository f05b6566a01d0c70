-- Semantic deduplication (SemDeDup) over the pool: the semdedup table (pipelines/semdedup.py, a
-- faiss pass over the run's image embeddings) names, for each duplicate, the kept point it
-- duplicates (dup_of). A group is a kept point and its duplicates; within the pool one row per
-- group survives: the group's kept point when an earlier step left it in, else the highest CLIP
-- score, then the smallest key.
-- View: pool (clip_score); semdedup (key, cluster, max_sim, dup_of). Output: key, reason, detail.
WITH grouped AS (
    SELECT p.key, p.clip_score, coalesce(s.dup_of, s.key) AS grp, s.dup_of IS NULL AS representative
    FROM pool AS p JOIN semdedup AS s USING (key)
)
SELECT key, 'semantic_duplicate' AS reason, keeper AS detail FROM (
    SELECT key, row_number() OVER w AS position, first_value(key) OVER w AS keeper
    FROM grouped
    WINDOW w AS (PARTITION BY grp ORDER BY representative DESC, clip_score DESC NULLS LAST, key)
)
WHERE position > 1
