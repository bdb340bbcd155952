"""The LanceDB index: one table schema shared by ingest and serving, upserts, index lifecycle, search."""
