"""The read-only web console (DESIGN §9): an overview grid of jobs by business date, each
execution with its steps and progress, the schedules, the watches and the nodes, as HTML
rendered on the server and as JSON."""

from batchd.web.pages import Pages
from batchd.web.server import WebConsole
from batchd.web.store import ReadOnlyStore

__all__ = ["Pages", "ReadOnlyStore", "WebConsole"]
