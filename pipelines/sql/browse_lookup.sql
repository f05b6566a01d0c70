-- tailor browse: every column of one key's row in a table (annotations, decisions, tags, semdedup).
-- View: tbl (the files that can hold the key). Parameter: $key.
SELECT * FROM tbl WHERE key = $key
