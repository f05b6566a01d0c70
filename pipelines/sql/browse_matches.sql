-- tailor browse: the samples in one key window (a keyset page: key > $after AND key <= $upto) that match
-- the grid's filters. A NULL parameter is no filter. browse.py adds `ORDER BY key LIMIT $limit` for a
-- page, or counts the rows.
-- Views: ann (annotations of the window's files: key, caption, status, clip_score, caption_lang, width,
-- height), dec (a subset's decisions.parquet, or an empty table), tags (an audit's tags of the window's
-- shards, or an empty table). The key bounds are repeated on every table so that each Parquet scan skips
-- the row groups outside the window.
SELECT a.key, a.caption, a.status, a.clip_score, a.caption_lang, a.width, a.height,
       d.kept, d.reason, d.step, d.detail, t.text_concepts, t.image_concepts
FROM ann AS a
LEFT JOIN (SELECT key, kept, reason, step, detail FROM dec WHERE key > $after AND key <= $upto) AS d
    ON d.key = a.key
LEFT JOIN (SELECT key, text_concepts, image_concepts FROM tags WHERE key > $after AND key <= $upto) AS t
    ON t.key = a.key
WHERE a.key > $after AND a.key <= $upto
  AND ($status IS NULL OR a.status = $status)
  AND ($decision IS NULL OR d.kept = ($decision = 'kept'))
  AND ($step IS NULL OR d.step = $step)
  AND ($reason IS NULL OR d.reason = $reason)
  AND ($clip_min IS NULL OR a.clip_score >= $clip_min)
  AND ($clip_max IS NULL OR a.clip_score <= $clip_max)
  AND ($lang IS NULL OR a.caption_lang = $lang)
  AND ($concept IS NULL OR CASE $concept_mode
        WHEN 'caption' THEN coalesce(list_contains(t.text_concepts, $concept), false)
        -- the image modes read image tags: only rows whose image was fetched and tagged (status ok, image
        -- tags not NULL; a row with no image has none, which is not "the image does not show it")
        ELSE a.status = 'ok' AND t.image_concepts IS NOT NULL AND CASE $concept_mode
            WHEN 'image' THEN list_contains(t.image_concepts, $concept)
            WHEN 'both' THEN coalesce(list_contains(t.text_concepts, $concept), false)
                             AND list_contains(t.image_concepts, $concept)
            -- misaligned: the caption names the concept, the (tagged) image was not tagged with it
            ELSE coalesce(list_contains(t.text_concepts, $concept), false)
                 AND NOT list_contains(t.image_concepts, $concept) END END)
  -- a random sample: a share $sample of the rows, drawn by md5(seed|key), the same on any machine
  AND ($sample IS NULL OR md5_number(concat($seed, '|', a.key)) % 1000000 < $sample * 1000000)
