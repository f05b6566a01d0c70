-- DataComp "basic" filtering: an English caption of more than 2 words and more than 5 characters,
-- an image whose shorter side is at least 200 px (as downloaded) and whose aspect ratio is at most 3.
-- The first failing condition is the reason.
--
-- View:       pool (caption_lang, caption_lang_score, caption_words, caption_chars,
--             original_width, original_height)
-- Parameters: $check_lang (BOOLEAN), $lang (VARCHAR), $min_lang_score, $min_words, $min_chars,
--             $check_side (BOOLEAN), $min_side, $check_aspect (BOOLEAN), $max_aspect
--             (without the image checks the step reads text columns only: it runs on a text pass)
-- Output:     key, reason, detail
SELECT key, reason, detail FROM (
    SELECT key,
        CASE
            WHEN $check_lang AND (caption_lang IS DISTINCT FROM $lang
                                  OR coalesce(caption_lang_score, 0) < $min_lang_score)
                THEN 'caption_language'
            WHEN coalesce(caption_words, 0) < $min_words THEN 'caption_too_few_words'
            WHEN coalesce(caption_chars, 0) < $min_chars THEN 'caption_too_short'
            WHEN $check_side AND least(original_width, original_height) < $min_side THEN 'image_too_small'
            WHEN $check_aspect AND greatest(original_width, original_height)
                                   > $max_aspect * least(original_width, original_height)
                THEN 'image_aspect_ratio'
        END AS reason,
        CASE
            WHEN $check_lang AND (caption_lang IS DISTINCT FROM $lang
                                  OR coalesce(caption_lang_score, 0) < $min_lang_score)
                THEN coalesce(caption_lang, 'none') || ' ' || coalesce(CAST(round(caption_lang_score, 3) AS VARCHAR), '')
            WHEN coalesce(caption_words, 0) < $min_words THEN CAST(coalesce(caption_words, 0) AS VARCHAR) || ' words'
            WHEN coalesce(caption_chars, 0) < $min_chars THEN CAST(coalesce(caption_chars, 0) AS VARCHAR) || ' chars'
            ELSE CAST(original_width AS VARCHAR) || 'x' || CAST(original_height AS VARCHAR)
        END AS detail
    FROM pool
)
WHERE reason IS NOT NULL
