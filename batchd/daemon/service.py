"""``batchd run``: the long-running service.

Start-up: config, repository, crash recovery, schedules and watches, then READY=1.
Signals: SIGTERM/SIGINT stop taking triggers, ask every running execution to stop, wait up
to ``stop_grace`` and exit (what still runs is left to crash recovery); a second one exits
at once. SIGHUP reloads the config: schedules and watches change, running jobs do not.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from batchd import failpoints
from batchd.daemon.backfill import Backfills
from batchd.daemon.config import EX_CONFIG, ConfigError, load_config
from batchd.daemon.control import ControlServer
from batchd.daemon.membership import Membership
from batchd.daemon.metrics import Metrics
from batchd.daemon.notify import SystemdNotifier
from batchd.daemon.recovery import crashed_runs, restart_crashed
from batchd.daemon.scheduler import Scheduler
from batchd.daemon.settings import Settings
from batchd.daemon.watcher import Watcher
from batchd.engine import JobOperator
from batchd.errors import RepositoryError
from batchd.model import JobExecution
from batchd.repository import SqlJobRepository, TriggerStore, parse_database_url
from batchd.repository.nodes import DatabaseClock, NodeConflict

if TYPE_CHECKING:
    from batchd.daemon.scheduler import FireResult
    from batchd.daemon.settings import ControlSettings
    from batchd.model import BatchStatus
    from batchd.repository.history import PurgeResult
    from batchd.repository.nodes import NodeRecord

log = logging.getLogger(__name__)

# sysexits.h: the database could not be reached (systemd restarts the unit for it).
EX_UNAVAILABLE = 69
# sysexits.h: the control socket cannot be created.
EX_CANTCREAT = 73
# A second SIGTERM/SIGINT while stopping: leave at once.
EX_FORCED = 1

AFTER_RECOVER = failpoints.declare(
    "daemon.after_recover",
    "crashed executions are FAILED but not yet restarted (on_crash = restart); the next "
    "recovery pass, here or on any node, finds them in the repository and restarts each once",
)
AFTER_TAKE_FIRE_CLAIM = failpoints.declare(
    "daemon.after_take_fire_claim",
    "a dead node's fire claim is taken over but its job not started; the claim is stale again "
    "a lease later and the next node to recover takes it over and starts the job once",
)
DURING_RELOAD = failpoints.declare(
    "daemon.during_reload",
    "a reload has read the new config but not applied it; nothing durable is written, so a "
    "kill leaves the config file to be read at the next start (used to widen the window in "
    "which a second reload must wait)",
)


class Daemon:
    """One run of the service, from start-up to exit status."""

    def __init__(self, config_path: Path | None, *, notifier: SystemdNotifier | None = None):
        self.config_path = config_path
        self.notifier = notifier or SystemdNotifier()
        self._signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        # One reload at a time, whether SIGHUP or the control socket asks; one recovery
        # pass at a time, whether the timer or the control socket asks.
        self._reload_lock = threading.Lock()
        self._recover_lock = threading.Lock()
        self._refused_restarts: set[int] = set()  # logged once, not every pass

    # ------------------------------------------------------------------ start-up

    def run(self) -> int:
        """Run until a stop signal; returns the exit status."""
        try:
            settings, registry = load_config(self.config_path)
            parse_database_url(settings.database_url)
        except (ConfigError, RepositoryError) as error:
            log.error("bad config %s:\n%s", self.config_path or "(defaults)", error)
            return EX_CONFIG
        try:
            repository = SqlJobRepository(settings.database_url)
        except RepositoryError as error:
            log.error("%s", error)
            return EX_UNAVAILABLE
        self.settings = settings
        # Times other nodes compare with ours (heartbeats, leases, claims) are the database's.
        clock = DatabaseClock(repository.clock)
        repository.clock = clock
        self.membership = Membership(
            repository,
            clock,
            name=settings.node,
            heartbeat=settings.heartbeat,
            lease=settings.lease,
        )
        try:
            self.membership.join()
        except NodeConflict as error:
            log.error("%s", error)
            repository.dispose()
            return EX_CONFIG
        except Exception as error:
            log.error("cannot register node %s in the repository: %s", settings.node, error)
            repository.dispose()
            return EX_UNAVAILABLE
        self.operator = JobOperator(
            repository,
            registry,
            max_concurrent_jobs=settings.max_concurrent_jobs,
            heartbeat=settings.heartbeat.total_seconds(),
            host=settings.node,
        )
        # Metrics watch the engine through its observer hooks and the triggers through
        # their listeners; the job gauges start from what the repository knows.
        self.metrics = Metrics(repository)
        self.backfills = Backfills(self.operator)
        self.metrics.node.info({"node": settings.node, "host": self.membership.host})
        self._report_membership()
        self.operator.add_observer(self.metrics)
        store = TriggerStore(repository, node=settings.node)
        self.store = store
        self.scheduler = Scheduler(
            settings.schedules,
            self.operator,
            store,
            timezone=settings.timezone,
            listener=self.metrics,
        )
        self.watcher = Watcher(
            settings.watches,
            self.operator,
            store,
            timezone=settings.timezone,
            listener=self.metrics,
            lease=settings.lease,
            may_take_over=self.membership.may_recover_others,
        )
        self.recover()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        self.scheduler.start()
        self.metrics.refresh_schedules(self.scheduler)
        self.watcher.start()
        log.info(
            "batchd node %s running: %d jobs, %d schedules, %d watches, repository %s",
            settings.node,
            len(registry.names()),
            len(settings.schedules),
            len(settings.watches),
            repository.url.render_as_string(hide_password=True),
        )
        self.control = ControlServer(self, listener=self.metrics)
        try:
            self.control.start()
            if settings.metrics.listen:
                self.metrics.start(settings.metrics.listen)
        except OSError as error:
            log.error("cannot open the control socket or the metrics listener: %s", error)
            self._shutdown("no control socket or metrics listener")
            return EX_CANTCREAT
        self.notifier.ready(self._status())
        return self._serve()

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

    def _serve(self) -> int:
        recover_every = self.settings.recover_every.total_seconds()
        watchdog_every = self.notifier.watchdog_interval
        next_recover = time.monotonic() + recover_every
        next_watchdog = time.monotonic() if watchdog_every else float("inf")
        while True:
            now = time.monotonic()
            if now >= next_watchdog and watchdog_every:
                self.notifier.watchdog()
                next_watchdog = now + watchdog_every
            if now >= self.membership.next_beat():
                try:
                    self._beat()
                except NodeConflict as error:
                    log.error("%s", error)
                    self._shutdown("node name taken over")
                    return EX_CONFIG
            if now >= next_recover:
                self.recover()
                self.notifier.status(self._status())
                next_recover = now + recover_every
            due = min(next_recover, next_watchdog, self.membership.next_beat())
            timeout = max(0.0, due - time.monotonic())
            try:
                signum = self._signals.get(timeout=timeout)
            except queue.Empty:
                continue
            if signum == signal.SIGHUP:
                self.reload("SIGHUP")
            else:
                return self._shutdown(signal.Signals(signum).name)

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
        self.metrics.database_up.set(1 if self.membership.database_up else 0)
        self.metrics.clock_skew.set(self.membership.clock.skew_seconds)

    def recover(self, *, raise_errors: bool = False) -> tuple[list[JobExecution], bool]:
        """One recovery pass (periodic, or asked for over the control socket): executions of
        dead owners FAILED, and restarted where their trigger says ``on_crash = "restart"``.
        Returns them, and whether old heartbeats were trusted to mean dead nodes (only once
        the database has answered this node for a lease)."""
        with self._recover_lock:
            return self._recover(raise_errors)

    def _recover(self, raise_errors: bool) -> tuple[list[JobExecution], bool]:
        trust_heartbeats = self.membership.may_recover_others()
        # First, so that an execution a dead taker started is linked to its file's claim
        # before recovery looks up what started it (on_crash = "restart").
        self.watcher.finish_claims()
        try:
            recovered = self.operator.recover(
                lease=self.settings.lease, trust_heartbeats=trust_heartbeats
            )
        except Exception:
            if raise_errors:
                raise
            log.exception("crash recovery failed; trying again later")
            return [], trust_heartbeats
        for execution in recovered:
            self.metrics.on_execution_recovered(execution)
            log.warning(
                "job execution %d (%s %s) FAILED by recovery: %s",
                execution.id,
                execution.job_name,
                execution.params,
                execution.exit_message,
            )
        failpoints.failpoint(AFTER_RECOVER)
        self._restart_after_crash()
        if trust_heartbeats:
            self._take_over_stale_claims()
        try:
            self.metrics.nodes_live.set(sum(live for _, live in self.membership.nodes()))
        except Exception:
            log.warning("cannot read the nodes for the metrics", exc_info=True)
        try:
            # Also brings in what other processes sharing the repository did.
            self.metrics.initialise_from(self.operator.repository, self.operator.registry.names())
        except Exception:
            log.exception("reading job states for the metrics failed; trying again later")
        return recovered, trust_heartbeats

    def _restart_after_crash(self) -> None:
        """Restart, on this node, the crashed executions whose schedule or watch says
        ``on_crash = "restart"``: read from the repository, so that those left over by a
        node killed between marking them FAILED and restarting them are restarted too."""
        try:
            runs = crashed_runs(self.operator, self.settings.schedules, self.settings.watches)
        except Exception:
            log.exception("cannot look up the crashed executions to restart; trying again later")
            return
        for run in runs:
            try:
                restart_crashed(self.operator, self.store, run, self.settings.node)
            except Exception as error:  # BatchError (e.g. the job was abandoned) or the database
                if run.last_execution_id not in self._refused_restarts:
                    self._refused_restarts.add(run.last_execution_id)
                    log.error(
                        "job execution %d of %s %s: restart after the crash failed: %s",
                        run.last_execution_id,
                        run.kind,
                        run.name,
                        error,
                    )

    def _take_over_stale_claims(self) -> None:
        """Fires claimed by a node that died before it started their job. (The watcher
        takes over stale file claims itself, when it sees the file again.)"""
        before = self.operator.repository.clock() - self.settings.lease
        try:
            fires = self.store.stale_fire_claims(before)
            for schedule, fire_time, claimed_at in fires:
                if self.store.take_fire_claim(schedule, fire_time, claimed_at):
                    failpoints.failpoint(AFTER_TAKE_FIRE_CLAIM)
                    log.warning(
                        "schedule %s fire %s was claimed by a node that died before starting "
                        "its job: starting it here",
                        schedule,
                        fire_time.isoformat(),
                    )
                    self.scheduler.launch_claimed(schedule, fire_time)
        except Exception:
            log.exception("taking over the claims of dead nodes failed; trying again later")

    # ------------------------------------------------------------------ reload

    def reload(self, asked_by: str) -> bool:
        """Reload the config; False (keeping the running one) when the new one is bad.

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

    def _reload(self, asked_by: str) -> bool:
        self.notifier.reloading()
        log.info("reload (%s): reading %s", asked_by, self.config_path)
        try:
            settings, _registry = load_config(self.config_path, reload=True)
        except ConfigError as error:
            log.error("reload refused, keeping the running config:\n%s", error)
            self.notifier.ready(self._status())
            return False
        failpoints.failpoint(DURING_RELOAD)
        self._warn_about_restart_only_settings(settings)
        self.scheduler.reconfigure(settings.schedules)
        self.watcher.reconfigure(settings.watches)
        self.settings = self.settings.model_copy(
            update={"schedules": settings.schedules, "watches": settings.watches}
        )
        log.info(
            "reloaded (%s): %d schedules, %d watches",
            asked_by,
            len(settings.schedules),
            len(settings.watches),
        )
        self.notifier.ready(self._status())
        return True

    def _warn_about_restart_only_settings(self, new: Settings) -> None:
        for key in ("database_url", "max_concurrent_jobs", "control", "metrics", "heartbeat"):
            if getattr(new, key) != getattr(self.settings, key):
                log.warning("%s changed: it takes effect only when batchd restarts", key)

    # ------------------------------------------------------------------ control socket
    # The DaemonControl interface (batchd.daemon.api), documented there.

    def control_settings(self) -> ControlSettings:
        return self.settings.control

    def node_name(self) -> str:
        return self.membership.name

    def database_state(self) -> str:
        return self.membership.database_state()

    def clock_skew_seconds(self) -> float:
        return self.membership.clock.skew_seconds

    def lease(self) -> timedelta:
        return self.membership.lease

    def nodes(self) -> list[tuple[NodeRecord, bool]]:
        return self.membership.nodes()

    def describe_jobs(self) -> list[dict[str, Any]]:
        return [job.describe() for job in self.operator.registry.jobs()]

    def describe_schedules(self) -> list[dict[str, Any]]:
        return self.scheduler.describe()

    def list_executions(
        self, job: str | None, status: BatchStatus | None, limit: int
    ) -> list[JobExecution]:
        return self.operator.list_executions(job_name=job, status=status, limit=limit)

    def get_execution(self, execution_id: int) -> JobExecution:
        return self.operator.get_execution(execution_id)

    def start_job(self, job: str, params: dict[str, Any] | str) -> int:
        return self.operator.start_async(job, params).id

    def stop_executions(self, target: str | int) -> list[JobExecution]:
        return self.operator.stop(target)

    def restart_job(self, target: str | int) -> int:
        return self.operator.restart_async(target).id

    def abandon_execution(self, execution_id: int) -> JobExecution:
        return self.operator.abandon(execution_id)

    def pause_schedule(self, schedule: str) -> None:
        self.scheduler.pause(schedule)

    def resume_schedule(self, schedule: str) -> None:
        self.scheduler.resume(schedule)

    def fire_schedule(self, schedule: str) -> tuple[str, FireResult | None]:
        outcome = self.scheduler.fire(schedule)
        return outcome, self.scheduler.last_result(schedule)

    def trigger_counts(self) -> tuple[int, int]:
        return len(self.settings.schedules), len(self.settings.watches)

    def purge_history(self, before_days: int, *, dry_run: bool) -> tuple[datetime, PurgeResult]:
        repository = self.operator.repository
        before = repository.clock() - timedelta(days=before_days)
        return before, repository.purge(before, dry_run=dry_run)

    # ------------------------------------------------------------------ shutdown

    def _shutdown(self, reason: str) -> int:
        self.control.close()
        self.backfills.close()
        # From now on a second stop signal leaves at once.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, _exit_at_once)
        handles = self.operator.active_handles()
        self.notifier.stopping(f"{reason}: stopping {len(handles)} running executions")
        log.info("%s: no more triggers; asking %d running executions to stop", reason, len(handles))
        self.scheduler.shutdown()
        self.watcher.stop()
        for handle in handles:
            self.operator.stop(handle.execution_id)
        deadline = time.monotonic() + self.settings.stop_grace.total_seconds()
        for handle in handles:
            handle.done.wait(max(0.0, deadline - time.monotonic()))
        still_running = [h.execution_id for h in self.operator.active_handles()]
        if still_running:
            log.warning(
                "stop_grace passed; executions %s still run and are left to crash recovery",
                still_running,
            )
            logging.shutdown()
            os._exit(0)  # job threads cannot be interrupted; recovery takes over
        self.operator.shutdown(wait=True)
        self.membership.leave()
        self.operator.repository.dispose()
        self.metrics.stop()
        log.info("batchd stopped")
        return 0


def _exit_at_once(signum: int, frame: FrameType | None) -> None:
    log.warning("second %s: exiting at once", signal.Signals(signum).name)
    logging.shutdown()
    os._exit(EX_FORCED)


def configure_logging(level: str = "INFO") -> None:
    """One line per event on stderr (journald adds time and unit)."""
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
