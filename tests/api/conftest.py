"""The PostgreSQL server of the fleet-mode tests (started once, when a test asks for it)."""

from tests.store.pg import pg_url, postgres  # noqa: F401 - fixtures
