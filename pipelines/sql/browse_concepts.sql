-- tailor browse, concepts: an audit's rank-frequency (RUN/audit/NAME/counts.parquet), tail concepts first
-- (lowest frequency first, ties by name). View: counts.
SELECT concept_id, concept, rank, frequency, text_count, image_count, matched_count, tail
FROM counts
ORDER BY tail DESC, frequency, concept
