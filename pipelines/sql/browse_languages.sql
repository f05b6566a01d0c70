-- tailor browse: the caption languages of (the first files of) a run, most frequent first. View: ann.
SELECT caption_lang AS lang, count(*) AS rows
FROM ann
WHERE caption_lang IS NOT NULL
GROUP BY caption_lang
ORDER BY rows DESC, lang
LIMIT 60
