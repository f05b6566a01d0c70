-- Misalignment: among ok rows whose image carries at least one concept tag, those whose caption
-- names none of the image's concepts (a caption about something else, or about nothing).
--
-- Views:      tags(key, status, text_concepts INTEGER[], image_concepts INTEGER[])
-- Parameters: none
-- Output:     one row: ok_rows, images_tagged, captions_tagged (ok rows naming any concept),
--             misaligned, misalignment_rate (misaligned / images_tagged), both_tagged_disjoint
--             (misaligned rows whose caption does name some other concept)
SELECT count(*) AS ok_rows,
       count(*) FILTER (WHERE len(image_concepts) > 0) AS images_tagged,
       count(*) FILTER (WHERE len(text_concepts) > 0) AS captions_tagged,
       count(*) FILTER (WHERE len(image_concepts) > 0 AND len(list_intersect(text_concepts, image_concepts)) = 0)
           AS misaligned,
       misaligned / greatest(images_tagged, 1) AS misalignment_rate,
       count(*) FILTER (WHERE len(image_concepts) > 0 AND len(text_concepts) > 0
                        AND len(list_intersect(text_concepts, image_concepts)) = 0) AS both_tagged_disjoint
FROM tags
WHERE status = 'ok'
