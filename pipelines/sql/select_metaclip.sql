-- MetaCLIP balancing inside a recipe: metaclip_decisions holds metaclip_balance.sql's output over
-- the pool's captions (entry counts taken over the pool); captions it does not keep are dropped,
-- as are pool rows that have no match list at all.
-- View: pool; metaclip_decisions (key, kept, reason). Output: key, reason, detail.
SELECT key, 'metaclip_' || reason AS reason, NULL AS detail FROM metaclip_decisions WHERE NOT kept
UNION ALL
SELECT key, 'metaclip_no_match' AS reason, 'no match list' AS detail
FROM pool ANTI JOIN metaclip_decisions USING (key)
