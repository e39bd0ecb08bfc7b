"""Fixtures every daemon test may ask for by name."""

from tests.daemon.support import daemons, launch  # noqa: F401 - the real daemon, started on demand
