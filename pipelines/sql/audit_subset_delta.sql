-- Coverage delta of a subset: per concept, its counts in the whole run and in the subset, and what
-- the recipe did to the tail.
--
-- Views:      full_counts, subset_counts   two outputs of audit_counts.sql (whole run; subset rows only)
-- Parameters: none
-- Output:     concept_id, concept, rank, tail, counts before and after (text_count: caption rows;
--             text_image_count, image_count, matched_count: distinct images, see audit_counts.sql),
--             frequency, subset_frequency, retained (subset_frequency / frequency; NULL when 0 before),
--             subset_rank, subset_tail, lost (present before, absent after), ordered by concept_id
SELECT f.concept_id,
       f.concept,
       f.rank,
       f.tail,
       f.text_count,
       s.text_count AS subset_text_count,
       f.text_image_count,
       s.text_image_count AS subset_text_image_count,
       f.image_count,
       s.image_count AS subset_image_count,
       f.matched_count,
       s.matched_count AS subset_matched_count,
       f.frequency,
       s.frequency AS subset_frequency,
       CASE WHEN f.frequency > 0 THEN s.frequency / f.frequency END AS retained,
       s.rank AS subset_rank,
       s.tail AS subset_tail,
       f.frequency > 0 AND s.frequency = 0 AS lost
FROM full_counts AS f
JOIN subset_counts AS s USING (concept_id)
ORDER BY f.concept_id
