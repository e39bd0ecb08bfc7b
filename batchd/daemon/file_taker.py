"""Taking one dropped file: read it, render its parameters, claim it, move it to
``processed/`` and start its job — and finishing the claims a taker left unfinished.

Taking a file, in this order:

1. Read it once (``O_NOFOLLOW``): SHA-256, size; mtime from the open file.
2. Parameters: ``render_params(watch.params, variables)`` with the variables of
   :data:`~batchd.daemon.watch_rules.WATCH_VARIABLES` and the regex's named groups.
   ``path`` is where the job finds the file: its final place in ``processed/``, because the
   file is moved there *before* the job starts. ``mtime`` is an aware datetime in the
   watcher's time zone, ``mtime_date`` its date. For a ``.json`` file (any case), its
   content must be a JSON object (at most ``MAX_JSON_TRIGGER`` bytes, UTF-8), merged over
   the rendered templates: **the file's content wins**, as the more specific instruction
   (the templates are the watch's defaults). The parameters are then validated by the job
   (its ``params_model``). A bad template, bad JSON (the reason names line and column) or
   invalid parameters reject the file (outcome ``rejected``) *before* it is claimed, so the
   same file can be dropped again once the configuration is fixed.
3. Claim (watch, name, SHA-256) in the repository (:class:`TriggerStore`), recording where
   the file goes in ``processed/`` and the job's parameters: unique in the database, so each
   file starts at most one instance across restarts and nodes. A file claimed before goes
   to ``rejected/`` (outcome ``duplicate``, reason ``already taken at ...``) —
   rejected rather than processed, because nothing was done with it. A claim left in state
   ``error`` is taken again. A claim left ``claimed`` (its taker died before finishing it)
   is finished as its taker meant (:meth:`FileTaker.resume`): at once when it is
   this node's, after the lease when another node's; until then the file is left to that
   node (outcome ``elsewhere``). :meth:`FileTaker.finish_claims` does the same for every
   unfinished claim, whether or not its file is still in the inbox: at start-up and at
   each recovery pass of the daemon.
4. Move the file to ``processed/``, then ``operator.start_async(job, params)``; the claim is
   finished ``started`` with the execution id. If the start is refused
   (``InvalidJobParameters``, ``JobInstanceAlreadyComplete``, ``JobExecutionAlreadyRunning``,
   any ``BatchError``), the claim records why, the file moves on to ``rejected/`` and the
   claim is finished ``rejected``; an unexpected error rejects the file with claim state
   ``error``.

A rejected file gets ``rejected/<name>.reason`` beside it (UTF-8 text, one line), written
before the file is moved. No file in ``processed/`` or ``rejected/`` is ever overwritten: a
name already there gets a UTC timestamp (and, if need be, a counter) before its suffix:
``payments.20261121T013000Z.csv``. A name that is not UTF-8 text is rejected.

**The claim is the durable intent.** It records the file (watch, name, SHA-256), where it
goes in ``processed/``, the job's parameters and the newest execution id at the time. Each
later step is one durable act (a rename, an execution, an update of the claim), so a
process killed between two of them leaves a claim still ``claimed``, and whoever finds it
(:func:`decide` says who may) finishes it from where it stopped (:meth:`FileTaker.resume`):
an execution of the job instance started after the claim is linked, not started again; a
file still in the inbox is moved; a file in ``processed/`` starts its job; a refused job's
file is moved on to ``rejected/``. The crash windows are the failpoints declared below.
"""

from __future__ import annotations

import enum
import logging
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any, Final

from batchd import failpoints
from batchd.daemon.templates import TemplateError, render_params
from batchd.daemon.watch_files import (
    PROCESSED,
    Rejected,
    free_path,
    json_params,
    move,
    read_file,
    reject_file,
)
from batchd.daemon.watch_rules import WatchState, is_text_name
from batchd.engine.operator import JobOperator
from batchd.errors import BatchError
from batchd.repository.triggers import FileClaim, TriggerStore

log = logging.getLogger("batchd.daemon.watcher")

#: What can happen to a file (the ``outcome`` of :class:`TakenFile`, metric label values).
OUTCOMES: Final = ("started", "duplicate", "rejected", "refused", "error", "elsewhere")

AFTER_CLAIM = failpoints.declare(
    "watcher.after_claim",
    "a file is claimed but still in the inbox: the claim is finished (file moved, job "
    "started) by this node's next start or recovery pass, or by another node after the lease",
)
AFTER_MOVE = failpoints.declare(
    "watcher.after_move",
    "a claimed file is in processed/ and its job not started: the claim's finisher starts it",
)
AFTER_START = failpoints.declare(
    "watcher.after_start",
    "a file's job is started but its claim not marked started: the claim's finisher finds "
    "the execution (its instance, after the claim's execution floor) and links it",
)
AFTER_REFUSAL = failpoints.declare(
    "watcher.after_refusal",
    "a file's job was refused and the claim says why, the file is still in processed/: "
    "the claim's finisher moves it to rejected/ with that reason",
)
AFTER_REJECTED_MOVE = failpoints.declare(
    "watcher.after_rejected_move",
    "a refused file is in rejected/ with its .reason, its claim not finished: the claim's "
    "finisher marks it rejected",
)


@dataclass(frozen=True)
class TakenFile:
    """What happened to one file: ``outcome`` is one of :data:`OUTCOMES`; ``destination``
    is where the file is now (None if it could not be moved)."""

    watch: str
    name: str
    outcome: str
    execution_id: int | None = None
    reason: str | None = None
    destination: Path | None = None


class Decision(enum.Enum):
    """What to do with a file whose claim already exists."""

    DUPLICATE = "duplicate"  # finished before: the file is a duplicate
    ELSEWHERE = "elsewhere"  # another node is taking it now
    RESUME = "resume"  # left unfinished by its taker: finish it here
    RETRY = "retry"  # ended in error: take the file again from scratch


def decide(
    claim: FileClaim, *, node: str | None, now: datetime, lease: timedelta, others_dead: bool
) -> Decision:
    """The decision on an existing claim, for the taker ``node`` at ``now``.

    A claim of this node still ``claimed`` is left by a process of this node that died:
    the caller holds the node's only taking lock, so no take of this node is under way.
    Another node's is left once it is older than the ``lease`` — if ``others_dead``, i.e.
    old heartbeats may be trusted to mean dead nodes (see Membership.may_recover_others).
    """
    if claim.state == "error":
        return Decision.RETRY
    if claim.state != "claimed":
        return Decision.DUPLICATE
    if claim.node == node or (others_dead and now - claim.claimed_at > lease):
        return Decision.RESUME
    return Decision.ELSEWHERE


def _duplicate_reason(claim: FileClaim) -> str:
    when = claim.claimed_at.isoformat(timespec="seconds")
    execution = f", execution {claim.execution_id}" if claim.execution_id is not None else ""
    # Without the outcome: the log line puts "duplicate" before it already.
    return f"already taken at {when} (claim {claim.id}, {claim.state}{execution})"


@dataclass(eq=False)
class FileTaker:
    """Takes files for the watcher (which serialises the calls: one take at a time)."""

    operator: JobOperator
    store: TriggerStore
    _: KW_ONLY
    timezone: tzinfo
    lease: timedelta
    may_take_over: Callable[[], bool]

    # ----------------------------------------------------------------- a new file

    def take(self, state: WatchState, path: Path) -> TakenFile | None:
        """Take the file at ``path`` (None: it is gone, or another taker has it now)."""
        name = path.name
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return None  # taken or removed meanwhile
        if stat.S_ISDIR(info.st_mode):
            return None
        try:
            _check_safe(state, path, name, info)
            digest, size, mtime_ns, content = read_file(path, name)
        except FileNotFoundError:
            return None
        except Rejected as refusal:
            return self._reject(state, path, name, refusal.outcome, refusal.reason)
        dest = free_path(state.root / PROCESSED, name)
        variables = state.variables(name, dest, size, mtime_ns, digest, self.timezone)
        try:
            params = self._params(state, name, variables, content)
        except Rejected as rejection:
            return self._reject(state, path, name, rejection.outcome, rejection.reason)
        claim = self.store.claim_file(
            state.name, name, digest, destination=str(dest), params=params
        )
        if claim is None:
            existing = self.store.claim_of_file(state.name, name, digest)
            if existing is None:  # claimed and gone again: cannot happen, but do not guess
                return None
            decision = self._decide(existing)
            if decision is Decision.ELSEWHERE:
                reason = f"node {existing.node} claimed it and is taking it"
                return TakenFile(state.name, name, "elsewhere", reason=reason)
            if decision is Decision.DUPLICATE:
                if not os.path.lexists(path):
                    return None  # the node holding the claim has moved it meanwhile
                reason = _duplicate_reason(existing)
                return self._reject(state, path, name, "duplicate", reason)
            claim = self.store.take_file_claim(existing, destination=str(dest), params=params)
            if claim is None:
                return None  # another node took it over first
            log.warning(
                "watch %s: %s: taking over claim %d left %s by node %s",
                state.name,
                name,
                claim.id,
                existing.state,
                existing.node,
            )
            if decision is Decision.RESUME:
                return self.resume(state, claim)
        failpoints.failpoint(AFTER_CLAIM)
        return self._start(state, path, claim)

    def _decide(self, claim: FileClaim) -> Decision:
        return decide(
            claim,
            node=self.store.node,
            now=self.store.repository.clock(),
            lease=self.lease,
            others_dead=self.may_take_over(),
        )

    def _params(
        self, state: WatchState, name: str, variables: dict[str, Any], content: bytes | None
    ) -> dict[str, Any]:
        """Rendered templates, merged with a JSON trigger's content, validated by the job."""
        try:
            params = render_params(state.settings.params, variables)
        except TemplateError as error:
            raise Rejected(f"bad parameter template: {error}") from None
        if name.lower().endswith(".json"):
            params.update(json_params(content))
        try:
            self.operator.registry.get(state.settings.job).parameters(params)
        except BatchError as error:  # NoSuchJob, InvalidJobParameters
            raise Rejected(str(error)) from None
        return params

    # --------------------------------------------------------- the claimed file

    def _start(self, state: WatchState, source: Path, claim: FileClaim) -> TakenFile:
        """Move the claimed file to its place in processed/, then start the job."""
        assert claim.destination is not None
        try:
            move(source, Path(claim.destination))
        except OSError as error:
            reason = f"cannot move {claim.name} to {PROCESSED}/: {error}"
            self._finish(claim, "error", None, reason)
            return TakenFile(state.name, claim.name, "error", reason=reason)
        failpoints.failpoint(AFTER_MOVE)
        return self._launch(state, claim)

    def _launch(self, state: WatchState, claim: FileClaim) -> TakenFile:
        """Start the job of a claimed file that is in processed/."""
        dest = Path(claim.destination or "")
        try:
            execution = self.operator.start_async(state.settings.job, claim.params)
        except BatchError as error:
            if not self.store.refuse_file(claim, str(error)):
                return self._lost(state, claim)
            failpoints.failpoint(AFTER_REFUSAL)
            return self._finish_rejection(state, claim, str(error))
        except Exception as error:  # e.g. the database: nothing durable says the job ran
            log.exception(
                "watch %s: %s: starting %s failed", state.name, claim.name, state.settings.job
            )
            reason = f"error: starting job {state.settings.job!r} failed: {error}"
            result = self._reject(state, dest, claim.name, "error", reason)
            self._finish(claim, "error", None, reason)
            return result
        failpoints.failpoint(AFTER_START)
        self._finish(claim, "started", execution.id, None)
        return TakenFile(state.name, claim.name, "started", execution.id, destination=dest)

    def _finish_rejection(self, state: WatchState, claim: FileClaim, reason: str) -> TakenFile:
        """Move a refused file from processed/ to rejected/, then finish its claim."""
        dest = Path(claim.destination or "")
        result = TakenFile(state.name, claim.name, "rejected", reason=reason)
        if os.path.lexists(dest):
            result = self._reject(state, dest, claim.name, "rejected", reason)
        failpoints.failpoint(AFTER_REJECTED_MOVE)
        self._finish(claim, "rejected", None, reason)
        return result

    def _finish(
        self, claim: FileClaim, claim_state: str, execution_id: int | None, reason: str | None
    ) -> None:
        try:
            if not self.store.finish_file(claim, claim_state, execution_id, reason):
                log.warning(
                    "watch %s: %s: claim %d was taken over by another node before it could "
                    "be finished %s",
                    claim.watch,
                    claim.name,
                    claim.id,
                    claim_state,
                )
        except Exception:  # left "claimed": the next recovery pass finishes it
            log.exception("watcher: cannot record claim %d as %s", claim.id, claim_state)

    def _lost(self, state: WatchState, claim: FileClaim) -> TakenFile:
        reason = f"claim {claim.id} was taken over by another node"
        return TakenFile(state.name, claim.name, "elsewhere", reason=reason)

    def _reject(
        self, state: WatchState, path: Path, name: str, outcome: str, reason: str
    ) -> TakenFile:
        """Move the file to rejected/ with its ``.reason`` beside it."""
        try:
            dest: Path | None = reject_file(state.root, path, name, reason)
        except OSError as error:
            log.error("watch %s: cannot reject %s: %s", state.name, name, error)
            dest = None
        return TakenFile(state.name, name, outcome, reason=reason, destination=dest)

    # ------------------------------------------------------ unfinished claims

    def finish_claims(self, states: Mapping[str, WatchState]) -> list[TakenFile]:
        """Finish every claim its taker left unfinished that this node may take over (see
        :func:`decide`), of the watches in ``states``. A claim that fails is logged and
        left for the next pass."""
        results = []
        for claim in self.store.unfinished_file_claims():
            state = states.get(claim.watch)
            if state is None or self._decide(claim) is not Decision.RESUME:
                continue
            try:
                taken = self.store.take_file_claim(claim)
                if taken is None:
                    continue  # another node took it over first
                log.warning(
                    "watch %s: %s: finishing claim %d left unfinished by node %s",
                    state.name,
                    claim.name,
                    claim.id,
                    claim.node,
                )
                result = self.resume(state, taken)
            except Exception:
                log.exception(
                    "watch %s: %s: cannot finish claim %d", claim.watch, claim.name, claim.id
                )
                continue
            if result is not None:
                results.append(result)
        return results

    def resume(self, state: WatchState, claim: FileClaim) -> TakenFile | None:
        """Finish a claim this taker now holds, from wherever its first taker stopped."""
        source = state.root / claim.name
        if claim.params is None or claim.destination is None:
            self._finish(claim, "error", None, "unfinished claim of an older batchd")
            return self.take(state, source)  # if the file is still there: take it afresh
        execution_id = self._started_execution(state, claim)
        if execution_id is not None:
            self._finish(claim, "started", execution_id, None)
            dest = Path(claim.destination)
            return TakenFile(state.name, claim.name, "started", execution_id, destination=dest)
        if claim.reason is not None:
            return self._finish_rejection(state, claim, claim.reason)
        if os.path.lexists(claim.destination):
            return self._launch(state, claim)
        try:
            digest = read_file(source, claim.name)[0] if os.path.lexists(source) else None
        except (OSError, Rejected):
            digest = None
        if digest == claim.sha256:
            return self._start(state, source, claim)
        reason = (
            f"{claim.name} is neither in the inbox nor in {PROCESSED}/: its job was not started"
        )
        self._finish(claim, "error", None, reason)
        return TakenFile(state.name, claim.name, "error", reason=reason)

    def _started_execution(self, state: WatchState, claim: FileClaim) -> int | None:
        """The execution the claim's taker started before it died, if it got that far."""
        try:
            job = self.operator.registry.get(state.settings.job)
            key = job.parameters(claim.params).job_key
        except BatchError:  # the job or its parameters changed: it cannot have started it
            return None
        return self.store.execution_after(job.name, key, claim.execution_floor)


def _check_safe(state: WatchState, path: Path, name: str, info: os.stat_result) -> None:
    """Refuse names that are not text, symlinks, paths resolving elsewhere and anything but
    regular files."""
    if not is_text_name(name):
        shown = os.fsencode(name).decode("utf-8", "backslashreplace")
        raise Rejected(f"the name '{shown}' is not UTF-8 text")
    if stat.S_ISLNK(info.st_mode):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        raise Rejected(f"refused: {name} is a symlink (to {target})", "refused")
    if Path(os.path.realpath(path)).parent != state.root:
        raise Rejected(f"refused: {name} resolves outside {state.root}", "refused")
    if not stat.S_ISREG(info.st_mode):
        raise Rejected(f"refused: {name} is not a regular file", "refused")
