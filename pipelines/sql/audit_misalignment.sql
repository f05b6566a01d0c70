-- ("ok": status ok, or not_fetched on a text pass, whose rows all count as caption rows.)
-- Misalignment, per image: among ok images (distinct coalesce(sha256, key)) carrying at least one
-- concept tag, those none of whose caption rows names any of the image's concepts (captions about
-- something else, or about nothing). An image with five captions is one image, misaligned only when
-- all five miss.
--
-- Views:      tags(key, status, sha256, text_concepts INTEGER[], image_concepts INTEGER[])
-- Parameters: none
-- Output:     one row: ok_rows (caption rows), ok_images, images_tagged (images with an image tag),
--             caption_rows_tagged (ok caption rows naming any concept), misaligned (images),
--             misalignment_rate (misaligned / images_tagged), both_tagged_disjoint (misaligned images
--             some caption row of which does name some other concept)
WITH ok AS (
    SELECT coalesce(sha256, key) AS image, text_concepts, image_concepts FROM tags WHERE status IN ('ok', 'not_fetched')
),
images AS (
    SELECT image,
           coalesce(bool_or(len(image_concepts) > 0), false) AS tagged,
           coalesce(bool_or(len(text_concepts) > 0), false) AS named,
           coalesce(bool_or(len(list_intersect(text_concepts, image_concepts)) > 0), false) AS aligned
    FROM ok
    GROUP BY image
)
SELECT (SELECT count(*) FROM ok) AS ok_rows,
       count(*) AS ok_images,
       count(*) FILTER (WHERE tagged) AS images_tagged,
       (SELECT count(*) FROM ok WHERE len(text_concepts) > 0) AS caption_rows_tagged,
       count(*) FILTER (WHERE tagged AND NOT aligned) AS misaligned,
       misaligned / greatest(images_tagged, 1) AS misalignment_rate,
       count(*) FILTER (WHERE tagged AND named AND NOT aligned) AS both_tagged_disjoint
FROM images
