-- The log-linear analysis of No "Zero-Shot" Without Exponential Data, binned as the authors'
-- released code bins: x = ln(count), a zero count set to 1 (x = 0);
--     edges = numpy.linspace(min(x), max(x), num=$edges)      (12 edges)
--     bin   = numpy.digitize(x, edges, right=True)             (the number of edges below x)
-- so bin 0 holds only x = min(x) and bin i holds edges[i-1] < x <= edges[i]: a bin is labelled by
-- its upper edge. Mean and population standard deviation (numpy.std, ddof 0) of accuracy per bin.
-- The edges are computed as linspace does (i * step + lo, the last one exactly hi), so a point on
-- an edge falls in the same bin as in numpy.
--
-- Views:      points(dataset VARCHAR, concept VARCHAR, count DOUBLE, accuracy DOUBLE), one row per
--             (dataset, concept), never merged by name
-- Parameters: $edges (number of edges = number of bins, >= 5)
-- Output:     bin (0-based), edge (upper edge, ln space), edge_count (exp(edge)), rows, mean, std
--             (mean and std NULL for an empty bin)
WITH x AS (
    SELECT ln(greatest(count, 1)) AS x, accuracy FROM points WHERE count IS NOT NULL AND accuracy IS NOT NULL
),
span AS (
    SELECT min(x) AS lo, max(x) AS hi, (max(x) - min(x)) / ($edges - 1) AS step FROM x
),
edges AS (
    SELECT CAST(r.i AS INTEGER) AS bin, CASE WHEN r.i = $edges - 1 THEN hi ELSE r.i * step + lo END AS edge
    FROM span, range($edges) AS r(i)
    WHERE lo IS NOT NULL
),
binned AS (
    SELECT (SELECT count(*) FROM edges WHERE edges.edge < x.x) AS bin, accuracy FROM x
)
SELECT e.bin, e.edge, exp(e.edge) AS edge_count, count(b.accuracy) AS rows, avg(b.accuracy) AS mean,
       stddev_pop(b.accuracy) AS std
FROM edges AS e
LEFT JOIN binned AS b USING (bin)
GROUP BY e.bin, e.edge
ORDER BY e.bin
