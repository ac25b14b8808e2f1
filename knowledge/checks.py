"""System checks of the database server ragloop needs (`manage.py check --database default`).

The vector search uses pgvector's HNSW indexes (0.5.0 and later) and nothing newer: the embedded
server has 0.6.2, production images 0.8. What 0.7 and 0.8 add (halfvec, iterative index scans)
is not used, on purpose: docs/deployment.md says why.
"""

from django.core import checks
from django.db import connections

MINIMUM_PGVECTOR = (0, 5, 0)


def pgvector_version(using: str = "default") -> tuple[int, ...] | None:
    """The installed pgvector extension's version in the database, or None when it is not installed."""
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        row = cursor.fetchone()
    if row is None:
        return None
    return tuple(int(part) for part in row[0].split(".") if part.isdigit())


@checks.register(checks.Tags.database)
def pgvector_check(app_configs=None, databases=None, **kwargs) -> list[checks.CheckMessage]:
    messages = []
    for alias in databases or []:
        version = pgvector_version(alias)
        if version is None:
            # The first migration creates it; before that, `migrate` is what is missing.
            messages.append(checks.Warning(
                "The pgvector extension is not installed in this database yet.",
                hint="Run `manage.py migrate` (it runs CREATE EXTENSION vector; the role needs that right).",
                id="knowledge.W001",
            ))  # fmt: skip
        elif version < MINIMUM_PGVECTOR:
            messages.append(checks.Error(
                f"pgvector {'.'.join(map(str, version))} has no HNSW index; ragloop needs "
                f"{'.'.join(map(str, MINIMUM_PGVECTOR))} or later.",
                hint="ALTER EXTENSION vector UPDATE after installing a newer pgvector on the server.",
                id="knowledge.E001",
            ))  # fmt: skip
    return messages
