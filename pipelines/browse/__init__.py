"""The local browse page: what a run holds (run), the views over it (views), the HTTP server (server)
and the static export (export)."""
