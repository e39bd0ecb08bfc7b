"""``batchd run``: the long-running service, as start-up, main loop and shutdown.

- **Start-up** reads the config, then starts the components in order: repository,
  membership, operator, metrics, scheduler, watcher, control server, metrics listener. Each
  is registered on an :class:`~contextlib.ExitStack` as it starts (:mod:`batchd.daemon.lifecycle`),
  so a start-up that fails half-way stops exactly what had started. The recovery pass
  (:mod:`batchd.daemon.recovery`) runs before the scheduler and the watcher start, so that no
  trigger fires into a crashed run; then READY=1.
- **The main loop** renews the node's heartbeat, runs the recovery pass every
  ``recover_every``, acts on the signals its handlers noted (they do nothing else), and sends
  WATCHDOG=1 only while every component's background threads are alive. A dead thread (a
  watcher that no longer takes files, a socket nobody answers) stops the daemon with exit
  status 70, for systemd (``Restart=on-failure``) to start it again.
- **Shutdown** (a stop signal, a dead thread, this node's name taken over) stops the
  components newest first: no more triggers; every running execution asked to stop and given
  ``stop_grace`` (what still runs is left to crash recovery); a second SIGTERM/SIGINT exits
  at once. The signal handlers the daemon found are put back at the end.

SIGHUP reloads the config: schedules and watches change, running jobs do not.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import sys
import threading
import time
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from batchd import failpoints
from batchd.daemon.backfill import Backfills
from batchd.daemon.config import EX_CONFIG, ConfigError, load_config
from batchd.daemon.control import ControlServer
from batchd.daemon.facade import DaemonFacade
from batchd.daemon.lifecycle import (
    Lifecycle,
    Part,
    nothing,
    restored_signal_handlers,
    stop_executions,
)
from batchd.daemon.membership import Membership
from batchd.daemon.notify import SystemdNotifier
from batchd.daemon.recovery import Recovery
from batchd.daemon.retries import Retrier, policies_from
from batchd.daemon.scheduler import Scheduler
from batchd.daemon.settings import Settings
from batchd.daemon.watcher import Watcher
from batchd.daemon.workers import ProcessOperator
from batchd.daemon.workers_pool import WorkerPool
from batchd.engine import JobOperator, JobRegistry
from batchd.errors import RepositoryError, WorkersUnavailable
from batchd.model import JobExecution
from batchd.repository import SqlJobRepository, TriggerStore, parse_database_url
from batchd.repository.nodes import DatabaseClock, NodeConflict

if TYPE_CHECKING:
    from batchd.daemon.metrics import Metrics

log = logging.getLogger(__name__)

# sysexits.h: the database could not be reached (systemd restarts the unit for it).
EX_UNAVAILABLE = 69
# sysexits.h: internal software error: a component's thread died (systemd restarts the unit).
EX_SOFTWARE = 70
# sysexits.h: the control socket cannot be created.
EX_CANTCREAT = 73
# A second SIGTERM/SIGINT while stopping: leave at once.
EX_FORCED = 1

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

DURING_RELOAD = failpoints.declare(
    "daemon.during_reload",
    "a reload has read the new config but not applied it; nothing durable is written, so a "
    "kill leaves the config file to be read at the next start (used to widen the window in "
    "which a second reload must wait)",
)


class StartupFailed(Exception):
    """A component could not start; ``status`` is the exit status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Daemon:
    """One run of the service, from start-up to exit status. The control socket talks to
    its components through a :class:`~batchd.daemon.facade.DaemonFacade`."""

    settings: Settings
    membership: Membership
    operator: JobOperator
    workers: WorkerPool  # with isolation = "process"
    backfills: Backfills
    metrics: Metrics | None  # None while [metrics] listen is off
    store: TriggerStore
    scheduler: Scheduler
    watcher: Watcher
    recovery: Recovery
    control: ControlServer

    def __init__(self, config_path: Path | None, *, notifier: SystemdNotifier | None = None):
        self.config_path = config_path
        self.notifier = notifier or SystemdNotifier()
        # The signal handlers only note the signal here; the main loop acts on it.
        self._signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        # One reload at a time, whether SIGHUP or the control socket asks.
        self._reload_lock = threading.Lock()
        self._exit_status = 0  # of the shutdown under way

    def run(self) -> int:
        """Start up, serve until told to stop, shut down; returns the exit status."""
        try:
            self.settings, registry = load_config(self.config_path)
            parse_database_url(self.settings.database_url)
        except (ConfigError, RepositoryError) as error:
            log.error("bad config %s:\n%s", self.config_path or "(defaults)", error)
            return EX_CONFIG
        with ExitStack() as stack:
            # Entered first, so left last: after the shutdown's own handlers have served.
            stack.enter_context(restored_signal_handlers((*STOP_SIGNALS, signal.SIGHUP)))
            lifecycle = Lifecycle(stack)
            try:
                self._startup(lifecycle, registry)
            except StartupFailed as failure:
                log.error("%s", failure)
                self._exit_status = failure.status
                return failure.status  # leaving the stack stops what had started
            self.notifier.ready(self._status())
            reason, self._exit_status = self._main_loop(lifecycle)
            self._begin_shutdown(reason)
        log.info("batchd stopped")
        return self._exit_status

    # ------------------------------------------------------------------ start-up

    def _startup(self, lifecycle: Lifecycle, registry: JobRegistry) -> None:
        """Start the components in order; StartupFailed, with the exit status that says
        why, when one cannot start (the stack then stops those that did)."""
        settings = self.settings
        # The control socket is taken first: a second daemon configured with this one's
        # socket is refused here, before it touches the repository or fires anything.
        self.control = ControlServer(settings.control)
        self._open(lifecycle, Part("control socket", self.control.bind, self.control.close))
        if settings.isolation == "process":
            # Started now, its imports overlap the repository's start (waited for below).
            self.workers = WorkerPool(self.config_path)
            lifecycle.start(
                Part(
                    "worker processes", self.workers.start, self.workers.close, self.workers.threads
                )
            )
        try:
            repository = SqlJobRepository(settings.database_url)
        except RepositoryError as error:
            raise StartupFailed(EX_UNAVAILABLE, str(error)) from error
        # Times other nodes compare with ours (heartbeats, leases, claims) are the database's.
        clock = DatabaseClock(repository.clock)
        repository.clock = clock
        lifecycle.start(Part("repository", nothing, repository.dispose))
        self.membership = Membership(
            repository,
            clock,
            name=settings.node,
            heartbeat=settings.heartbeat,
            lease=settings.lease,
        )
        lifecycle.start(Part("membership", self._join, self.membership.leave))
        self.operator = self._make_operator(lifecycle, repository, registry)
        self.backfills = Backfills(self.operator)
        lifecycle.start(Part("operator", nothing, self._stop_executions))
        # Metrics watch the engine through its observer hooks and the triggers through
        # their listeners; the job gauges start from what the repository knows. Only with
        # the listener on (a change takes a restart): nothing else reads them, and
        # prometheus-client with the HTTP modules it imports is about 2.5 MiB resident.
        self.metrics = None
        if settings.metrics.listen:
            from batchd.daemon.metrics import Metrics

            self.metrics = Metrics(repository)
            lifecycle.start(Part("metrics", self._start_metrics))
        self.store = TriggerStore(repository, node=settings.node)
        self.scheduler = Scheduler(
            settings.schedules,
            self.operator,
            self.store,
            timezone=settings.timezone,
            listener=self.metrics,
            calendars=settings.calendars,
        )
        self.watcher = Watcher(
            settings.watches,
            self.operator,
            self.store,
            timezone=settings.timezone,
            listener=self.metrics,
            lease=settings.lease,
            may_take_over=self.membership.may_recover_others,
        )
        self.recovery = Recovery(
            self.operator, self.store, self.scheduler, self.watcher, self.membership, self.metrics
        )
        # Before any trigger fires: a schedule's catch-up must find its crashed runs FAILED.
        self.recover()
        for signum in (*STOP_SIGNALS, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        scheduler, watcher = self.scheduler, self.watcher
        lifecycle.start(
            Part("scheduler", self._start_scheduler, scheduler.shutdown, scheduler.threads)
        )
        lifecycle.start(Part("watcher", watcher.start, watcher.stop, watcher.threads))
        # [job.<name>] retries: FAILED executions restarted after their backoff (a reload
        # changes the policies: they are read at every pass).
        retrier = Retrier(
            self.operator,
            lambda: policies_from(self.settings),
            on_retry=None if self.metrics is None else self.metrics.on_retry,
        )
        self.operator.add_observer(retrier)
        lifecycle.start(Part("retries", retrier.start, retrier.stop, retrier.threads))
        log.info(
            "batchd node %s running: %d jobs, %d schedules, %d watches, repository %s",
            settings.node,
            len(registry.names()),
            len(settings.schedules),
            len(settings.watches),
            repository.url.render_as_string(hide_password=True),
        )
        self.control.listener = self.metrics
        facade = DaemonFacade(self, self.membership, self.operator, self.scheduler, self.backfills)
        # Closed first on shutdown, as before (closing again at the end does nothing).
        serve = partial(self.control.serve, facade)
        control = Part("control server", serve, self.control.close, self.control.threads)
        self._open(lifecycle, control)
        if self.metrics is not None and settings.metrics.listen:
            listen = partial(self.metrics.start, settings.metrics.listen)
            self._open(
                lifecycle,
                Part("metrics listener", listen, self.metrics.stop, self.metrics.http.threads),
            )
        if settings.web.listen:
            # Imported here: a daemon without the console never loads Jinja2.
            from batchd.web.run import make_console

            # Pages read self.settings when asked (a reload replaces them) and ask the
            # scheduler only for its next fire times; they run on the console's own threads.
            web = make_console(
                lambda: self.settings,
                settings.web.listen,
                next_fires=self.scheduler.next_fire_times,
            )
            self._open(lifecycle, Part(web.name, web.start, web.stop, web.threads))
        # The start-up since join() may have outlasted the lease (the warm process importing
        # slow job modules): once READY, other nodes must see this one live, never dead.
        lifecycle.start(Part("heartbeat", self._first_beat))

    def _make_operator(
        self, lifecycle: Lifecycle, repository: SqlJobRepository, registry: JobRegistry
    ) -> JobOperator:
        """The thread operator, or (``isolation = "process"``, DESIGN §6) one whose
        executions run in worker processes forked from a warm process."""
        settings = self.settings
        options: dict[str, Any] = {
            "max_concurrent_jobs": settings.max_concurrent_jobs,
            "heartbeat": settings.heartbeat.total_seconds(),
            "host": settings.node,
        }
        if settings.isolation == "thread":
            return JobOperator(repository, registry, **options)
        try:
            settings.log_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StartupFailed(EX_CANTCREAT, f"cannot create log_dir: {error}") from error
        lifecycle.start(Part("warm worker process", self._workers_ready))
        return ProcessOperator(repository, registry, self.workers, lambda: self.settings, **options)

    def _workers_ready(self) -> None:
        try:
            self.workers.wait_ready()
        except WorkersUnavailable as error:
            raise StartupFailed(EX_SOFTWARE, str(error)) from error

    def _join(self) -> None:
        try:
            self.membership.join()
        except NodeConflict as error:
            raise StartupFailed(EX_CONFIG, str(error)) from error
        except Exception as error:
            message = f"cannot register node {self.settings.node} in the repository: {error}"
            raise StartupFailed(EX_UNAVAILABLE, message) from error

    def _first_beat(self) -> None:
        try:
            self._beat()
        except NodeConflict as error:
            raise StartupFailed(EX_CONFIG, str(error)) from error

    def _start_metrics(self) -> None:
        assert self.metrics is not None
        self.metrics.node.info({"node": self.settings.node, "host": self.membership.host})
        self._report_membership()
        self.operator.add_observer(self.metrics)

    def _start_scheduler(self) -> None:
        self.scheduler.start()
        if self.metrics is not None:
            self.metrics.refresh_schedules(self.scheduler)

    @staticmethod
    def _open(lifecycle: Lifecycle, socket_part: Part) -> None:
        try:
            lifecycle.start(socket_part)
        except OSError as error:
            message = f"cannot open the {socket_part.name}: {error}"
            raise StartupFailed(EX_CANTCREAT, message) from error

    def _status(self) -> str:
        running = len(self.operator.active_handles())
        database = "" if self.membership.database_up else "; DATABASE UNREACHABLE"
        return (
            f"node {self.settings.node}: {running} running; {len(self.settings.schedules)} "
            f"schedules, {len(self.settings.watches)} watches{database}"
        )

    # ------------------------------------------------------------------ main loop

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals.put(signum)

    def _main_loop(self, lifecycle: Lifecycle) -> tuple[str, int]:
        """Until a stop signal, a dead component or this node's name taken over: why, and
        the exit status."""
        recover_every = self.settings.recover_every.total_seconds()
        watchdog_every = self.notifier.watchdog_interval
        next_recover = time.monotonic() + recover_every
        next_watchdog = time.monotonic() if watchdog_every else float("inf")
        while True:
            # Checked right before each WATCHDOG=1: systemd must not hear that all is well
            # from a daemon whose watcher or socket has died.
            dead = ", ".join(lifecycle.dead())
            if dead:
                log.error("thread died: %s; stopping with exit status %d", dead, EX_SOFTWARE)
                return f"thread died: {dead}", EX_SOFTWARE
            now = time.monotonic()
            if watchdog_every and now >= next_watchdog:
                self.notifier.watchdog()
                next_watchdog = now + watchdog_every
            if now >= self.membership.next_beat():
                try:
                    self._beat()
                except NodeConflict as error:
                    log.error("%s", error)
                    return "node name taken over", EX_CONFIG
            if now >= next_recover:
                self.recover()
                self.notifier.status(self._status())
                next_recover = now + recover_every
            due = min(next_recover, next_watchdog, self.membership.next_beat())
            try:
                signum = self._signals.get(timeout=max(0.0, due - time.monotonic()))
            except queue.Empty:
                continue
            if signum == signal.SIGHUP:
                self.reload("SIGHUP")
            else:
                return signal.Signals(signum).name, 0

    def _beat(self) -> None:
        """This node's heartbeat; after a database outage, catch up what was missed."""
        was_up = self.membership.database_up
        came_back = self.membership.beat()
        self._report_membership()
        if was_up != self.membership.database_up:
            self.notifier.status(self._status())
        if came_back:
            try:
                self.scheduler.catch_up()
            except Exception:
                log.exception("catching up the schedules after the database outage failed")

    def _report_membership(self) -> None:
        if self.metrics is None:
            return
        self.metrics.database_up.set(1 if self.membership.database_up else 0)
        self.metrics.clock_skew.set(self.membership.clock.skew_seconds)

    def recover(self, *, raise_errors: bool = False) -> tuple[list[JobExecution], bool]:
        """One recovery pass (:class:`~batchd.daemon.recovery.Recovery`) with the triggers of
        the running config."""
        return self.recovery.run(self.settings, raise_errors=raise_errors)

    # ------------------------------------------------------------------ reload

    def reload(self, asked_by: str) -> str | None:
        """Reload the config; None, or why the new one is bad (the running one is kept).

        One reload at a time: a reload asked for while another runs waits for it, then
        reads the config file again (the one running may have read it before the latest
        edit), so every request is answered by a config read after it was made."""
        if not self._reload_lock.acquire(blocking=False):
            log.info("reload (%s): waiting for the reload in progress to finish", asked_by)
            self._reload_lock.acquire()
        try:
            return self._reload(asked_by)
        finally:
            self._reload_lock.release()

    def _reload(self, asked_by: str) -> str | None:
        self.notifier.reloading()
        log.info("reload (%s): reading %s", asked_by, self.config_path)
        try:
            settings, _registry = load_config(self.config_path, reload=True)
        except ConfigError as error:
            log.error("reload refused, keeping the running config:\n%s", error)
            self.notifier.ready(self._status())
            return str(error)
        failpoints.failpoint(DURING_RELOAD)
        self._warn_about_restart_only_settings(settings)
        self.scheduler.reconfigure(settings.schedules, settings.calendars)
        self.watcher.reconfigure(settings.watches)
        if isinstance(self.operator, ProcessOperator):
            try:
                self.workers.remake()  # the job modules as they are now; running workers stay
            except WorkersUnavailable as error:
                log.error("reload: %s; workers still fork from the previous one", error)
        self.settings = self.settings.model_copy(
            update={
                "schedules": settings.schedules,
                "watches": settings.watches,
                "calendars": settings.calendars,
                "limits": settings.limits,
            }
        )
        log.info(
            "reloaded (%s): %d schedules, %d watches",
            asked_by,
            len(settings.schedules),
            len(settings.watches),
        )
        self.notifier.ready(self._status())
        return None

    def _warn_about_restart_only_settings(self, new: Settings) -> None:
        for key in ("database_url", "max_concurrent_jobs", "control", "metrics", "heartbeat"):
            if getattr(new, key) != getattr(self.settings, key):
                log.warning("%s changed: it takes effect only when batchd restarts", key)

    # ------------------------------------------------------------------ shutdown

    def _begin_shutdown(self, reason: str) -> None:
        # From now on a second stop signal leaves at once.
        for signum in STOP_SIGNALS:
            signal.signal(signum, _exit_at_once)
        running = len(self.operator.active_handles())
        self.notifier.stopping(f"{reason}: stopping {running} running executions")
        log.info("%s: stopping", reason)

    def _stop_executions(self) -> None:
        """The operator's stop, once no trigger can start anything: no further backfill date,
        every running execution asked to stop and given ``stop_grace``."""
        self.backfills.close()
        stop_executions(self.operator, self.settings.stop_grace, exit_status=self._exit_status)


def _exit_at_once(signum: int, frame: FrameType | None) -> None:
    log.warning("second %s: exiting at once", signal.Signals(signum).name)
    logging.shutdown()
    os._exit(EX_FORCED)


def configure_logging(level: str = "INFO") -> None:
    """One line per event on stderr: journald adds the time and the unit; anywhere else
    (a terminal, a file, another supervisor) the line carries its own time."""
    stamp = "" if under_journald() else "%(asctime)s "
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format=stamp + "%(levelname)s %(name)s: %(message)s",
    )


def under_journald() -> bool:
    """Whether stderr is the journal's stream: systemd sets ``JOURNAL_STREAM`` to its
    ``device:inode`` (compared, as systemd advises: a child whose stderr was redirected
    inherits the variable but not the stream)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        info = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return expected == f"{info.st_dev}:{info.st_ino}"
