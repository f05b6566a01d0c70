-- tailor browse --out: an audit's concept tags (ids) for the keys of a static copy (a key range).
-- View: tags. Parameters: $first, $last.
SELECT key, text_concepts, image_concepts
FROM tags
WHERE key >= $first AND key <= $last
