-- Worldwide (MetaCLIP 2) entry counts: per language, count(lang, entry) = the number of captions
-- matched in that language whose match list holds the entry (once per caption). Every entry of the
-- list of each language that some row was matched in is listed, 0 for those no caption holds: the
-- thresholds are derived from each language's whole list (MetaCLIP 2's curate.py counts into an
-- array as long as the language's metadata). A matched (lang, entry_id) that the metadata lacks comes
-- out with entry NULL (the caller refuses it).
--
-- Views:      matches(key VARCHAR, lang VARCHAR, metaclip_entries INTEGER[])   one row per caption
--             entries(entry_id INTEGER, entry VARCHAR, lang VARCHAR)         the worldwide metadata
-- Parameters: none
-- Output:     lang, entry_id, entry, count (BIGINT), ordered by lang, entry_id
WITH langs AS (
    SELECT DISTINCT lang FROM matches
),
per_entry AS (
    SELECT lang, entry_id, count(*) AS count
    FROM (SELECT lang, unnest(list_distinct(metaclip_entries)) AS entry_id FROM matches)
    GROUP BY lang, entry_id
),
listed AS (
    SELECT e.lang, CAST(e.entry_id AS INTEGER) AS entry_id, e.entry FROM entries AS e SEMI JOIN langs USING (lang)
)
SELECT coalesce(l.lang, p.lang) AS lang,
       coalesce(l.entry_id, p.entry_id) AS entry_id,
       l.entry,
       coalesce(p.count, 0) AS count
FROM listed AS l
FULL OUTER JOIN per_entry AS p ON l.lang = p.lang AND l.entry_id = p.entry_id
ORDER BY lang, entry_id
