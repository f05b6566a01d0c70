-- Caption rows per status. View: captions (the set's parts).
SELECT status, count(*) AS n FROM captions GROUP BY status ORDER BY n DESC, status;
