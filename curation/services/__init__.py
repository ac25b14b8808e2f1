"""Write operations on knowledge bases, documents, embeddings, turns and tokens (one module each)."""
