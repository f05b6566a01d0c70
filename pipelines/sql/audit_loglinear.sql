-- The log-linear analysis of No "Zero-Shot" Without Exponential Data: x = ln(frequency), with a
-- zero frequency set to 1 (x = 0); 12 (here $bins) equal-width bins between min(x) and max(x), the
-- last bin closed on the right (as numpy.histogram); the mean accuracy per bin.
--
-- Views:      points(concept_id INTEGER, frequency BIGINT, accuracy DOUBLE)   concepts with an accuracy
-- Parameters: $bins (number of bins, > 0)
-- Output:     bin (0-based), left_edge, right_edge, n (concepts in the bin), mean_accuracy (NULL when empty)
WITH x AS (
    SELECT ln(greatest(frequency, 1)) AS x, accuracy FROM points WHERE accuracy IS NOT NULL
),
span AS (
    SELECT min(x) AS lo, max(x) AS hi, (max(x) - min(x)) / $bins AS width FROM x
),
binned AS (
    SELECT CASE WHEN width = 0 THEN 0 ELSE least(CAST(floor((x - lo) / width) AS INTEGER), $bins - 1) END AS bin,
           accuracy
    FROM x, span
),
edges AS (
    SELECT CAST(b.range AS INTEGER) AS bin, lo + b.range * width AS left_edge, lo + (b.range + 1) * width AS right_edge
    FROM span, range($bins) AS b
)
SELECT e.bin, e.left_edge, e.right_edge, count(binned.accuracy) AS n, avg(binned.accuracy) AS mean_accuracy
FROM edges AS e
LEFT JOIN binned USING (bin)
GROUP BY e.bin, e.left_edge, e.right_edge
ORDER BY e.bin
