-- Decontamination: drop pool rows whose image is within the thresholds of an evaluation image
-- (pipelines/decontam.py wrote one row per such pool key).
-- View: pool; contaminated (key, eval_image, cosine, hamming, by). Output: key, reason, detail.
SELECT p.key, 'contaminated' AS reason, c.eval_image || ' (' || c.by || ')' AS detail
FROM pool AS p JOIN contaminated AS c USING (key)
