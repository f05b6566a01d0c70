-- One round of connected components by minimum-label propagation with pointer jumping: every node
-- takes the smallest label among itself and its neighbours, then the label of that label.
-- Repeated until no label changes (select.py counts the changes); rounds grow with the log of the
-- components' diameter.
-- Tables: near_edges (a, b), near_labels (node, label). Writes: near_labels_next (node, label).
CREATE OR REPLACE TEMP TABLE near_labels_next AS
WITH both_ways AS (
    SELECT a AS node, b AS other FROM near_edges
    UNION ALL
    SELECT b AS node, a AS other FROM near_edges
),
neighbour_min AS (
    SELECT w.node, min(l.label) AS label
    FROM both_ways AS w JOIN near_labels AS l ON l.node = w.other
    GROUP BY w.node
),
hop AS (
    SELECT l.node, least(l.label, coalesce(n.label, l.label)) AS label
    FROM near_labels AS l LEFT JOIN neighbour_min AS n USING (node)
)
SELECT h.node, least(h.label, coalesce(j.label, h.label)) AS label
FROM hop AS h LEFT JOIN hop AS j ON j.node = h.label;
