"""Signals the knowledge app sends for higher layers to act on (training listens; knowledge knows nothing of it)."""

from django.dispatch import Signal

# Sent once, after commit, when a space that was building has a vector for every chunk.
# Arguments: space (EmbeddingSpace).
embedding_space_ready = Signal()
