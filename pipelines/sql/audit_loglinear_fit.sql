-- The fit of the log-linear analysis: Pearson correlation between the bins' left edges and their
-- mean accuracies (non-empty bins only), and the least-squares line mean_accuracy ~ left_edge.
--
-- Views:      bins   the output of audit_loglinear.sql
-- Parameters: none
-- Output:     one row: bins_used, pearson_r, slope, intercept
SELECT count(mean_accuracy) AS bins_used,
       corr(mean_accuracy, left_edge) AS pearson_r,
       regr_slope(mean_accuracy, left_edge) AS slope,
       regr_intercept(mean_accuracy, left_edge) AS intercept
FROM bins
WHERE mean_accuracy IS NOT NULL
