-- The fit of the log-linear analysis, as the authors' released code fits it: Pearson r between the
-- bins' upper edges (ln count) and their mean accuracies over bins 1 .. $edges - 2 (the first bin,
-- x = min only, and the last are left out; empty bins too), and the least-squares line
-- mean ~ edge over the same bins.
--
-- Views:      bins   the output of audit_loglinear.sql
-- Parameters: $edges (as given to audit_loglinear.sql)
-- Output:     one row: bins_used, pearson_r, slope, intercept (NaN or NULL when undefined)
SELECT count(mean) AS bins_used,
       corr(mean, edge) AS pearson_r,
       regr_slope(mean, edge) AS slope,
       regr_intercept(mean, edge) AS intercept
FROM bins
WHERE bin BETWEEN 1 AND $edges - 2 AND mean IS NOT NULL
