-- Caption boilerplate (ALIGN): an alt-text shared by more than $max_images distinct images
-- (by sha256) says nothing about any of them; neither do empty captions nor, when $use_patterns,
-- captions that are wholly a generic word or a file name ($pattern, RE2, matched against the
-- lower-cased caption with whitespace collapsed).
-- View: pool (caption, sha256). Parameters: $max_images, $use_patterns, $pattern.
-- Output: key, reason, detail.
WITH normalised AS (
    SELECT key,
           lower(trim(regexp_replace(coalesce(caption, ''), '\s+', ' ', 'g'))) AS text,
           coalesce(sha256, key) AS image
    FROM pool
),
shared AS (
    SELECT text, count(DISTINCT image) AS images FROM normalised GROUP BY text
)
SELECT key,
       CASE WHEN text = '' THEN 'caption_empty'
            WHEN images > $max_images THEN 'caption_shared'
            ELSE 'caption_generic' END AS reason,
       CASE WHEN images > $max_images THEN CAST(images AS VARCHAR) || ' images share it' ELSE text END AS detail
FROM normalised
JOIN shared USING (text)
WHERE text = '' OR images > $max_images OR ($use_patterns AND regexp_full_match(text, $pattern))
