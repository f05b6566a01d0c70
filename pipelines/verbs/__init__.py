"""One module per verb (and the reports it writes): annotate, fetch, match, metaclip-balance, select,
materialize, recaption, audit, semdedup, decontaminate, evaluate."""
