"""The plumbing every verb shares: config, the run folder (storage), Ray (engine), DuckDB (duck), the
input sources, progress on a terminal (console), the host budget's actor (hosts), option parsing."""
