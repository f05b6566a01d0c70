-- tailor browse, duplicates: SemDeDup groups (RUN/dedup/semdedup.parquet): each duplicate names in dup_of
-- the kept point it duplicates; the kept key heads its group.
-- View: sem (key, dup_of). Output: keeper, key, kept.
SELECT keeper, key, kept FROM (
    SELECT dup_of AS keeper, key, false AS kept FROM sem WHERE dup_of IS NOT NULL
    UNION ALL
    SELECT DISTINCT dup_of AS keeper, dup_of AS key, true AS kept FROM sem WHERE dup_of IS NOT NULL
)
ORDER BY keeper, kept DESC, key
