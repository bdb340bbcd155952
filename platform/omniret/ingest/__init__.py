"""Ingestion with Ray Data: discover files, expand them into items, embed, upsert into the index."""
