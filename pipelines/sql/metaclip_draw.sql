-- MetaCLIP's per-(caption, entry) draw, shared by metaclip_balance and metaclip2_balance.
-- kept when u < t / max(count, t), with u in [0, 1) from the first 52 bits of md5(seed|key|entry):
-- the same on any number of workers or threads, and reproducible outside SQL.
CREATE OR REPLACE TEMP MACRO metaclip_draw_kept(seed, key, entry, entry_count, t) AS
    ('0x' || substr(md5(CAST(seed AS VARCHAR) || '|' || key || '|' || entry), 1, 13))::BIGINT
        / 4503599627370496.0
    < t / greatest(entry_count, t);
