"""The database system check: pgvector's version read from the server, refused below HNSW's."""

from django.core.management import call_command
from django.db import connection

from knowledge import checks


def test_the_installed_pgvector_version_is_read_from_the_database(db):
    with connection.cursor() as cursor:
        cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        installed = cursor.fetchone()[0]
    version = checks.pgvector_version()
    assert ".".join(map(str, version)) == installed
    assert version >= checks.MINIMUM_PGVECTOR


def test_a_server_with_pgvector_older_than_hnsw_is_an_error_and_a_current_one_passes(db, monkeypatch):
    assert checks.pgvector_check(databases=["default"]) == []
    monkeypatch.setattr(checks, "MINIMUM_PGVECTOR", (99, 0, 0))
    [message] = checks.pgvector_check(databases=["default"])
    assert message.id == "knowledge.E001"
    assert "99.0.0 or later" in message.msg


def test_the_check_runs_with_manage_py_check_database(db):
    call_command("check", databases=["default"])  # raises SystemCheckError on an error
