-- tailor browse --out: the decisions of a subset for the keys of a static copy (a key range).
-- View: dec. Parameters: $first, $last.
SELECT key, kept, reason, step
FROM dec
WHERE key >= $first AND key <= $last
