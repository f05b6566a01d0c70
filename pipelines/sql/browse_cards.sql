-- tailor browse: the card fields of the given keys (search results, neighbours, duplicate groups).
-- View: ann (annotations of the files that can hold the keys). Parameter: $keys (a list).
SELECT key, caption, status, clip_score, caption_lang, width, height
FROM ann
WHERE list_contains($keys, key)
