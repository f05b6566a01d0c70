-- Near-duplicate candidates by pHash Hamming distance <= $max_hamming, without comparing all pairs.
--
-- Multi-index hashing (Manku et al., "Detecting near-duplicates for web crawling", 2007): the
-- 64 bits are cut into m = $max_hamming + 2 blocks; two hashes within distance k differ in at most
-- k blocks, so they agree on at least 2 of them, i.e. on one of the C(m, 2) block pairs. Each
-- row of near_masks is one block pair as a 64-bit mask: hashes that agree under some mask are
-- candidates, and only candidates are compared bit by bit. No pair within the distance is missed.
-- Equal hashes are one node, so a thousand copies of a blank image cost one node, not 10^6 pairs.
--
-- View:       pool (phash UBIGINT); table near_masks (band INTEGER, mask UBIGINT)
-- Parameters: $max_hamming
-- Writes:     near_edges (a UBIGINT, b UBIGINT, a < b): distinct hashes within the distance
CREATE OR REPLACE TEMP TABLE near_edges AS
WITH nodes AS (
    SELECT DISTINCT phash AS node FROM pool WHERE phash IS NOT NULL
),
signatures AS (
    SELECT n.node, m.band, n.node & m.mask AS signature
    FROM nodes AS n CROSS JOIN near_masks AS m
)
SELECT DISTINCT a.node AS a, b.node AS b
FROM signatures AS a
JOIN signatures AS b ON a.band = b.band AND a.signature = b.signature AND a.node < b.node
WHERE bit_count(xor(a.node, b.node)) <= $max_hamming;

-- Connected components start as one component per hash that has a neighbour.
CREATE OR REPLACE TEMP TABLE near_labels AS
SELECT node, node AS label FROM (SELECT a AS node FROM near_edges UNION SELECT b FROM near_edges);
