-- MetaCLIP balancing inside a recipe: metaclip_decisions holds metaclip_balance.sql's output over
-- the pool's captions (entry counts taken over the pool); captions it does not keep are dropped,
-- as are pool rows that have no match list at all. Reasons as `tailor metaclip-balance` names them.
-- View: pool; metaclip_decisions (key, kept, reason). Output: key, reason, detail.
SELECT key, reason, NULL AS detail FROM metaclip_decisions WHERE NOT kept
UNION ALL
SELECT key, 'no_match' AS reason, 'no match list' AS detail
FROM pool ANTI JOIN metaclip_decisions USING (key)
