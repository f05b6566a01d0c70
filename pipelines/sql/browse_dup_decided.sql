-- tailor browse, duplicates: groups as a subset decided them (near_duplicate, exact_duplicate): every row
-- dropped for $reason names the key kept in its detail; the kept key heads its group.
-- View: dec (a subset's decisions.parquet). Output: keeper, key, kept.
SELECT keeper, key, kept FROM (
    SELECT detail AS keeper, key, false AS kept FROM dec WHERE reason = $reason AND detail IS NOT NULL
    UNION ALL
    SELECT DISTINCT detail AS keeper, detail AS key, true AS kept FROM dec WHERE reason = $reason AND detail IS NOT NULL
)
ORDER BY keeper, kept DESC, key
