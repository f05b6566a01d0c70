-- tailor browse: the concept tags (ids) of the given keys in an audit. View: tags. Parameter: $keys (a list).
SELECT key, text_concepts, image_concepts
FROM tags
WHERE list_contains($keys, key)
