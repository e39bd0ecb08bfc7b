"""Fixtures every daemon test may ask for by name."""

# The real daemon, started on demand.
from tests.daemon.support import daemons, launch, launched  # noqa: F401
