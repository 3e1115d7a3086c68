"""The run store: one SQLite file per run, holding every fact a run produced.

The idea behind it: a duel counts only once its row is committed. Proposing a
duel, saving each generation and completing the duel are separate committed
transactions, so a process killed at any instant leaves a store that says
exactly what was paid for (generations) and what was counted (completed duels).
On resume, duels still ``proposed`` are issued again with their seeds, their
saved generations are reused instead of paid twice, and a duel can be completed
only once.

The tables are plain and can be read with any SQLite tool:

``run``
    one row: the resolved experiment (JSON), status, last decision, seed.
``policies``
    policy index -> name, from the experiment.
``duels``
    one row per duel, from proposal to verdict; ``seq`` is the order in which
    duels finished (``NULL`` while proposed) and ``outcome`` is the verdict for
    ``policy_i`` (``NULL`` unless the state is ``done``).
``generations``
    the responses, at most one per duel and side (``'i'`` or ``'j'``).
``decisions``
    every decision the sampler took, with the pairs it proposed then.
``events``
    a free-form log of the run.
``heldout_duels``
    after a decided run, the chosen policy against the default policy on each
    held-out task; kept apart from ``duels`` so they never count for the
    decision. ``outcome`` is for ``policy_i`` (the order shown was drawn per
    task); ``chosen`` and ``baseline`` say which policy is which.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from llmpo import __version__
from llmpo.backends.base import Generation
from llmpo.errors import StoreError

logger = logging.getLogger(__name__)

# "llpo" in ASCII: marks the file as an llmpo run store for `PRAGMA application_id`.
APPLICATION_ID = 0x6C6C706F
SCHEMA_VERSION = 1
STATUSES = ("running", "decided", "undecided", "stopped", "failed")
DUEL_STATES = ("proposed", "done", "unparsable", "failed")
SIDES = ("i", "j")
TABLES = ("run", "policies", "duels", "generations", "decisions", "events")
# Exported only when they hold rows: most runs have no held-out comparison.
OPTIONAL_TABLES = ("heldout_duels",)
HELDOUT_STATES = ("done", "unparsable", "failed")

_SCHEMA = (
    """
    CREATE TABLE run (
        id              TEXT PRIMARY KEY,
        created_at      TEXT NOT NULL,
        updated_at      TEXT NOT NULL,
        experiment_json TEXT NOT NULL,
        status          TEXT NOT NULL CHECK (status IN
                            ('running', 'decided', 'undecided', 'stopped', 'failed')),
        decision_json   TEXT,
        llmpo_version   TEXT NOT NULL,
        seed            INTEGER NOT NULL
    )
    """,
    """
    CREATE TABLE policies (
        idx  INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE
    )
    """,
    """
    CREATE TABLE duels (
        id                      INTEGER PRIMARY KEY,
        seq                     INTEGER UNIQUE,
        batch                   INTEGER,
        policy_i                INTEGER NOT NULL,
        policy_j                INTEGER NOT NULL,
        task_id                 TEXT NOT NULL,
        seed                    INTEGER NOT NULL,
        state                   TEXT NOT NULL DEFAULT 'proposed' CHECK (state IN
                                    ('proposed', 'done', 'unparsable', 'failed')),
        outcome                 REAL CHECK (outcome BETWEEN 0 AND 1),
        order_shown             TEXT,
        judge_raw               TEXT,
        flags                   TEXT,
        error                   TEXT,
        response_i_id           INTEGER REFERENCES generations (id),
        response_j_id           INTEGER REFERENCES generations (id),
        judge_prompt_tokens     INTEGER NOT NULL DEFAULT 0,
        judge_completion_tokens INTEGER NOT NULL DEFAULT 0,
        judge_cost              REAL NOT NULL DEFAULT 0,
        latency_s               REAL,
        proposed_at             TEXT NOT NULL,
        completed_at            TEXT,
        CHECK (policy_i != policy_j),
        CHECK ((state = 'done') = (outcome IS NOT NULL))
    )
    """,
    "CREATE INDEX duels_state ON duels (state)",
    """
    CREATE TABLE generations (
        id                INTEGER PRIMARY KEY,
        duel_id           INTEGER NOT NULL REFERENCES duels (id),
        side              TEXT NOT NULL CHECK (side IN ('i', 'j')),
        policy            INTEGER NOT NULL,
        task_id           TEXT NOT NULL,
        seed              INTEGER NOT NULL,
        text              TEXT NOT NULL,
        model             TEXT NOT NULL DEFAULT '',
        prompt_tokens     INTEGER NOT NULL DEFAULT 0,
        completion_tokens INTEGER NOT NULL DEFAULT 0,
        latency_s         REAL NOT NULL DEFAULT 0,
        cost              REAL NOT NULL DEFAULT 0,
        created_at        TEXT NOT NULL,
        UNIQUE (duel_id, side)
    )
    """,
    """
    CREATE TABLE decisions (
        seq                 INTEGER PRIMARY KEY,
        n_duels             INTEGER NOT NULL,
        leader              INTEGER,
        stopped             INTEGER NOT NULL CHECK (stopped IN (0, 1)),
        p_value             REAL,
        log_evidence        REAL,
        log_threshold       REAL,
        proposed_pairs_json TEXT NOT NULL DEFAULT '[]',
        created_at          TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE events (
        id      INTEGER PRIMARY KEY,
        time    TEXT NOT NULL,
        kind    TEXT NOT NULL,
        message TEXT NOT NULL
    )
    """,
)

# Added after the first stores were written: created on open when missing, so a
# store from before it gains the table the first time it is opened for writing.
_HELDOUT_SCHEMA = """
    CREATE TABLE IF NOT EXISTS heldout_duels (
        id                      INTEGER PRIMARY KEY,
        task_id                 TEXT NOT NULL UNIQUE,
        chosen                  INTEGER NOT NULL,
        baseline                INTEGER NOT NULL,
        policy_i                INTEGER NOT NULL,
        policy_j                INTEGER NOT NULL,
        seed                    INTEGER NOT NULL,
        state                   TEXT NOT NULL CHECK (state IN
                                    ('done', 'unparsable', 'failed')),
        outcome                 REAL CHECK (outcome BETWEEN 0 AND 1),
        response_i              TEXT,
        response_j              TEXT,
        judge_raw               TEXT,
        order_shown             TEXT,
        flags                   TEXT,
        error                   TEXT,
        generation_tokens       INTEGER NOT NULL DEFAULT 0,
        judge_tokens            INTEGER NOT NULL DEFAULT 0,
        cost                    REAL NOT NULL DEFAULT 0,
        latency_s               REAL,
        completed_at            TEXT NOT NULL,
        CHECK (policy_i != policy_j),
        CHECK ((state = 'done') = (outcome IS NOT NULL)),
        CHECK ((chosen = policy_i AND baseline = policy_j)
               OR (chosen = policy_j AND baseline = policy_i))
    )
"""


@dataclass(frozen=True)
class PendingDuel:
    """A duel proposed and not finished: to be issued again, with its seed."""

    duel_id: int
    policy_i: int
    policy_j: int
    task_id: str
    seed: int
    batch: int | None


class RunStore:
    """The durable record of one run, in one SQLite file.

    Build it with :meth:`create` (a new run) or :meth:`open` (an existing one);
    every write method commits before returning. A store may be used from
    several threads; writes are serialised by a lock.

    Parameters
    ----------
    connection : sqlite3.Connection
        An open connection in autocommit mode (transactions are explicit).
    path : Path
        The store's file, for messages.
    readonly : bool
        Whether the connection was opened read-only.
    """

    def __init__(self, connection: sqlite3.Connection, path: Path, readonly: bool):
        self._connection = connection
        self._lock = threading.RLock()
        self.path = path
        self.readonly = readonly

    # -- opening and closing ---------------------------------------------------

    @classmethod
    def create(cls, path: str | Path, experiment_json: str, seed: int) -> RunStore:
        """Create the store of a new run at ``path``.

        Parameters
        ----------
        path : str or Path
            File to create; parent folders are created. Never overwritten.
        experiment_json : str
            The resolved experiment (:meth:`llmpo.experiment.Experiment.to_json`);
            its ``policies[*].name`` fill the ``policies`` table.
        seed : int
            The run's seed.

        Returns
        -------
        RunStore
            Open for writing, with status ``running``.

        Raises
        ------
        StoreError
            When the file exists or ``experiment_json`` is not JSON.
        """
        path = Path(path)
        if path.exists():
            raise StoreError(
                f"run store '{path}': already exists; choose a new path or resume it"
            )
        try:
            experiment = json.loads(experiment_json)
        except (TypeError, json.JSONDecodeError) as error:
            raise StoreError(
                f"run store '{path}': experiment_json is not JSON ({error})"
            ) from None
        names = [
            str(policy.get("name", index)) if isinstance(policy, dict) else str(index)
            for index, policy in enumerate(
                experiment.get("policies", []) if isinstance(experiment, dict) else []
            )
        ]
        path.parent.mkdir(parents=True, exist_ok=True)
        connection = _connect(str(path), uri=False)
        store = cls(connection, path, readonly=False)
        now = _now()
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            store._configure()
            with store._transaction():
                for statement in _SCHEMA:
                    connection.execute(statement)
                connection.execute(_HELDOUT_SCHEMA)
                connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                connection.execute(
                    "INSERT INTO run (id, created_at, updated_at, experiment_json,"
                    " status, llmpo_version, seed)"
                    " VALUES (?, ?, ?, ?, 'running', ?, ?)",
                    (uuid.uuid4().hex[:12], now, now, experiment_json, __version__,
                     int(seed)),
                )
                connection.executemany(
                    "INSERT INTO policies (idx, name) VALUES (?, ?)", enumerate(names)
                )
        except BaseException:
            connection.close()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            raise
        logger.info("created run store %s", path)
        return store

    @classmethod
    def open(cls, path: str | Path, readonly: bool = False) -> RunStore:
        """Open the store of an existing run.

        Parameters
        ----------
        path : str or Path
            The store's file.
        readonly : bool
            Open with SQLite's ``mode=ro``: every write method then raises
            :class:`StoreError`. Safe while another process writes the run.

        Raises
        ------
        StoreError
            When the file is missing, is not SQLite, is not an llmpo run store,
            or was written by a newer llmpo.
        """
        path = Path(path)
        if not path.is_file():
            raise StoreError(f"run store '{path}': no such file")
        target = f"{path.resolve().as_uri()}?mode=ro" if readonly else str(path)
        connection = _connect(target, uri=readonly)
        try:
            application_id = connection.execute("PRAGMA application_id").fetchone()[0]
            version = connection.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as error:
            connection.close()
            raise StoreError(
                f"run store '{path}': not an SQLite file ({error}), expected an llmpo "
                "run store"
            ) from None
        if application_id != APPLICATION_ID:
            connection.close()
            raise StoreError(
                f"run store '{path}': an SQLite file but not an llmpo run store "
                f"(application_id {application_id}, expected {APPLICATION_ID})"
            )
        if version > SCHEMA_VERSION:
            connection.close()
            raise StoreError(
                f"run store '{path}': schema version {version} is newer than this "
                f"llmpo understands ({SCHEMA_VERSION}); upgrade llmpo"
            )
        store = cls(connection, path, readonly=readonly)
        store._configure()
        if store._row("SELECT id FROM run") is None:
            connection.close()
            raise StoreError(f"run store '{path}': has no run row, expected one")
        if not readonly and not store._has_table("heldout_duels"):
            with store._transaction():
                connection.execute(_HELDOUT_SCHEMA)
        return store

    def close(self) -> None:
        """Close the connection; every write was committed already."""
        with self._lock:
            self._connection.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- the run -----------------------------------------------------------------

    @property
    def run(self) -> dict[str, Any]:
        """The ``run`` row as a dict."""
        return self._row("SELECT * FROM run")

    @property
    def experiment_json(self) -> str:
        """The resolved experiment the run was created with."""
        return self.run["experiment_json"]

    @property
    def seed(self) -> int:
        """The run's seed."""
        return self.run["seed"]

    @property
    def status(self) -> str:
        """One of ``running``, ``decided``, ``undecided``, ``stopped``, ``failed``."""
        return self.run["status"]

    @property
    def policy_names(self) -> list[str]:
        """Policy names by index, as stored from the experiment."""
        rows = self._rows("SELECT name FROM policies ORDER BY idx")
        return [row["name"] for row in rows]

    def set_status(self, status: str, decision: dict | str | None = None) -> None:
        """Set the run's status and, when given, its final decision (dict or JSON).

        Raises
        ------
        StoreError
            When ``status`` is not one of :data:`STATUSES`.
        """
        if status not in STATUSES:
            raise StoreError(
                f"status: got {status!r}, expected one of {', '.join(STATUSES)}"
            )
        decision_json = decision if decision is None or isinstance(decision, str) else (
            json.dumps(decision, default=_plain)
        )
        with self._transaction():
            if decision_json is None:
                self._connection.execute(
                    "UPDATE run SET status = ?, updated_at = ?", (status, _now())
                )
            else:
                self._connection.execute(
                    "UPDATE run SET status = ?, decision_json = ?, updated_at = ?",
                    (status, decision_json, _now()),
                )
        logger.debug("run status %s", status)

    def log_event(self, kind: str, message: str) -> None:
        """Append one line to the run's event log."""
        with self._transaction():
            self._connection.execute(
                "INSERT INTO events (time, kind, message) VALUES (?, ?, ?)",
                (_now(), kind, message),
            )

    def events(self) -> list[dict[str, Any]]:
        """The event log, oldest first."""
        return self._rows("SELECT * FROM events ORDER BY id")

    # -- duels -------------------------------------------------------------------

    def propose_duel(
        self,
        policy_i: int,
        policy_j: int,
        task_id: str,
        seed: int,
        *,
        batch: int | None = None,
    ) -> int:
        """Record a duel about to be issued, in state ``proposed``; return its id.

        ``policy_i`` and ``policy_j`` are policy indices in the order dueled (the
        outcome is for ``policy_i``); ``seed`` drives its generations and judge.

        Raises
        ------
        StoreError
            When the two policies are the same or an index is out of range.
        """
        policy_i, policy_j = int(policy_i), int(policy_j)
        n_policies = len(self.policy_names)
        for name, index in (("policy_i", policy_i), ("policy_j", policy_j)):
            if n_policies and not 0 <= index < n_policies:
                raise StoreError(
                    f"{name}: got {index}, expected a policy index in [0, {n_policies})"
                )
        if policy_i == policy_j:
            raise StoreError(
                f"policy_j: got {policy_j}, expected a policy other than policy_i"
            )
        with self._transaction():
            cursor = self._connection.execute(
                "INSERT INTO duels"
                " (batch, policy_i, policy_j, task_id, seed, proposed_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (batch, policy_i, policy_j, str(task_id), int(seed), _now()),
            )
        return cursor.lastrowid

    def save_generation(
        self,
        duel_id: int,
        side: str,
        *,
        text: str,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        latency_s: float = 0.0,
        cost: float = 0.0,
        model: str = "",
    ) -> int:
        """Save the response of one side of a proposed duel, committed at once.

        The keywords are the fields of :class:`llmpo.backends.base.Generation`,
        so ``save_generation(duel_id, "i", **dataclasses.asdict(generation))``
        works. Returns the generation's id.

        Raises
        ------
        StoreError
            When the duel is unknown or finished, ``side`` is not ``'i'`` or
            ``'j'``, or that side already has a generation (it was paid once).
        """
        if side not in SIDES:
            raise StoreError(f"side: got {side!r}, expected 'i' or 'j'")
        with self._transaction():
            duel = self._duel_in_state(duel_id, "proposed", "save a generation for")
            if duel[f"response_{side}_id"] is not None:
                raise StoreError(
                    f"duel {duel_id}: side {side!r} already has a generation; a "
                    "generation is saved once"
                )
            cursor = self._connection.execute(
                "INSERT INTO generations (duel_id, side, policy, task_id, seed, text,"
                " model, prompt_tokens, completion_tokens, latency_s, cost, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (duel_id, side, duel[f"policy_{side}"], duel["task_id"], duel["seed"],
                 text, model, int(prompt_tokens), int(completion_tokens),
                 float(latency_s), float(cost), _now()),
            )
            self._connection.execute(
                f"UPDATE duels SET response_{side}_id = ? WHERE id = ?",
                (cursor.lastrowid, duel_id),
            )
        return cursor.lastrowid

    def generation(self, duel_id: int, side: str) -> Generation | None:
        """The saved generation of one side of a duel, or ``None`` when not saved."""
        row = self._row(
            "SELECT * FROM generations WHERE duel_id = ? AND side = ?", (duel_id, side)
        )
        if row is None:
            return None
        return Generation(
            text=row["text"],
            prompt_tokens=row["prompt_tokens"],
            completion_tokens=row["completion_tokens"],
            latency_s=row["latency_s"],
            cost=row["cost"],
            model=row["model"],
        )

    def complete_duel(
        self,
        duel_id: int,
        outcome: float | None,
        *,
        judge_raw: str = "",
        order_shown: str = "",
        flags: Sequence[str] = (),
        judge_prompt_tokens: int = 0,
        judge_completion_tokens: int = 0,
        judge_cost: float = 0.0,
        latency_s: float | None = None,
    ) -> None:
        """Record the verdict of a proposed duel, in one transaction.

        The duel becomes ``done`` (counted) with ``outcome`` in [0, 1] for
        ``policy_i``, or ``unparsable`` (kept, never counted) when ``outcome`` is
        ``None``. ``flags`` are stored comma-separated.

        Raises
        ------
        StoreError
            When the duel is unknown or already finished (a duel is counted at
            most once), or ``outcome`` is outside [0, 1].
        """
        if outcome is not None and not (math.isfinite(outcome) and 0 <= outcome <= 1):
            raise StoreError(
                f"duel {duel_id}: got outcome {outcome!r}, expected a number in [0, 1] "
                "or None"
            )
        state = "unparsable" if outcome is None else "done"
        with self._transaction():
            self._duel_in_state(duel_id, "proposed", "complete")
            self._connection.execute(
                "UPDATE duels SET state = ?, outcome = ?, judge_raw = ?,"
                " order_shown = ?, flags = ?, judge_prompt_tokens = ?,"
                " judge_completion_tokens = ?, judge_cost = ?, latency_s = ?,"
                " completed_at = ?,"
                " seq = (SELECT COALESCE(MAX(seq), 0) + 1 FROM duels)"
                " WHERE id = ? AND state = 'proposed'",
                (state, None if outcome is None else float(outcome), judge_raw,
                 order_shown, ",".join(flags), int(judge_prompt_tokens),
                 int(judge_completion_tokens), float(judge_cost), latency_s, _now(),
                 duel_id),
            )

    def fail_duel(self, duel_id: int, reason: str) -> None:
        """Mark a proposed duel ``failed`` (never counted, not issued again).

        Raises
        ------
        StoreError
            When the duel is unknown or already finished.
        """
        with self._transaction():
            self._duel_in_state(duel_id, "proposed", "fail")
            self._connection.execute(
                "UPDATE duels SET state = 'failed', error = ?, completed_at = ?,"
                " seq = (SELECT COALESCE(MAX(seq), 0) + 1 FROM duels)"
                " WHERE id = ? AND state = 'proposed'",
                (reason, _now(), duel_id),
            )

    def duel(self, duel_id: int) -> dict[str, Any]:
        """The row of one duel as a dict.

        Raises
        ------
        StoreError
            When there is no such duel.
        """
        row = self._row("SELECT * FROM duels WHERE id = ?", (duel_id,))
        if row is None:
            raise StoreError(f"run store '{self.path}': duel {duel_id} not found")
        return row

    def duels(self, state: str | None = None) -> list[dict[str, Any]]:
        """Rows of all duels (or those in ``state``), by id."""
        if state is None:
            return self._rows("SELECT * FROM duels ORDER BY id")
        return self._rows("SELECT * FROM duels WHERE state = ? ORDER BY id", (state,))

    def pending_duels(self) -> list[PendingDuel]:
        """Duels proposed and not finished, by id: those to issue again on resume."""
        return [
            PendingDuel(
                duel_id=row["id"],
                policy_i=row["policy_i"],
                policy_j=row["policy_j"],
                task_id=row["task_id"],
                seed=row["seed"],
                batch=row["batch"],
            )
            for row in self._rows(
                "SELECT id, policy_i, policy_j, task_id, seed, batch FROM duels"
                " WHERE state = 'proposed' ORDER BY id"
            )
        ]

    def outcomes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Counted duels in completion order, as arrays ``(i, j, outcome)``.

        Replaying them through :meth:`llmpo.stats.procedure.Procedure.record`
        rebuilds the evidence of the run.
        """
        with self._lock:
            rows = self._connection.execute(
                "SELECT policy_i, policy_j, outcome FROM duels WHERE state = 'done'"
                " ORDER BY seq"
            ).fetchall()
        table = np.array(rows, dtype=float).reshape(-1, 3)
        return table[:, 0].astype(np.int64), table[:, 1].astype(np.int64), table[:, 2]

    # -- decisions ---------------------------------------------------------------

    def record_decision(
        self,
        *,
        n_duels: int,
        leader: int | None,
        stopped: bool,
        p_value: float,
        log_evidence: float,
        log_threshold: float,
        proposed_pairs: Sequence[tuple[int, int]] = (),
    ) -> int:
        """Record a decision of the sampler and the pairs it proposed; return its seq.

        The keywords after ``n_duels`` are the fields of
        :class:`llmpo.stats.procedure.Decision`.
        """
        pairs = [[int(a), int(b)] for a, b in proposed_pairs]
        with self._transaction():
            cursor = self._connection.execute(
                "INSERT INTO decisions (n_duels, leader, stopped, p_value,"
                " log_evidence, log_threshold, proposed_pairs_json, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (int(n_duels), None if leader is None else int(leader),
                 int(bool(stopped)), _real(p_value), _real(log_evidence),
                 _real(log_threshold), json.dumps(pairs), _now()),
            )
        return cursor.lastrowid

    def decisions(self) -> list[dict[str, Any]]:
        """Every recorded decision, oldest first."""
        return self._rows("SELECT * FROM decisions ORDER BY seq")

    # -- held-out comparison -----------------------------------------------------

    def save_heldout_duel(
        self,
        task_id: str,
        *,
        chosen: int,
        baseline: int,
        policy_i: int,
        policy_j: int,
        seed: int,
        outcome: float | None = None,
        error: str | None = None,
        response_i: str = "",
        response_j: str = "",
        judge_raw: str = "",
        order_shown: str = "",
        flags: Sequence[str] = (),
        generation_tokens: int = 0,
        judge_tokens: int = 0,
        cost: float = 0.0,
        latency_s: float | None = None,
    ) -> None:
        """Record one held-out duel of the chosen policy against the baseline.

        The duel is ``failed`` when ``error`` is given, ``unparsable`` when
        ``outcome`` is ``None``, else ``done`` with ``outcome`` for ``policy_i``.
        Held-out duels never enter :meth:`outcomes`.

        Raises
        ------
        StoreError
            When the task already has a held-out duel, the two policies are not
            ``chosen`` and ``baseline``, or ``outcome`` is outside [0, 1].
        """
        if outcome is not None and not (math.isfinite(outcome) and 0 <= outcome <= 1):
            raise StoreError(
                f"held-out task {task_id!r}: got outcome {outcome!r}, expected a "
                "number in [0, 1] or None"
            )
        if {int(policy_i), int(policy_j)} != {int(chosen), int(baseline)}:
            raise StoreError(
                f"held-out task {task_id!r}: got policies ({policy_i}, {policy_j}), "
                f"expected the chosen {chosen} and the baseline {baseline}"
            )
        if error is not None:
            state, outcome = "failed", None
        else:
            state = "unparsable" if outcome is None else "done"
        with self._transaction():
            if self._row(
                "SELECT id FROM heldout_duels WHERE task_id = ?", (str(task_id),)
            ) is not None:
                raise StoreError(
                    f"held-out task {task_id!r}: already has a held-out duel; "
                    "each held-out task is dueled once"
                )
            self._connection.execute(
                "INSERT INTO heldout_duels (task_id, chosen, baseline, policy_i,"
                " policy_j, seed, state, outcome, response_i, response_j,"
                " judge_raw, order_shown, flags, error, generation_tokens,"
                " judge_tokens, cost, latency_s, completed_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (str(task_id), int(chosen), int(baseline), int(policy_i),
                 int(policy_j), int(seed), state,
                 None if outcome is None else float(outcome), response_i,
                 response_j, judge_raw, order_shown, ",".join(flags), error,
                 int(generation_tokens), int(judge_tokens), float(cost), latency_s,
                 _now()),
            )

    def heldout_duels(self) -> list[dict[str, Any]]:
        """Rows of the held-out duels, by id (empty when there are none)."""
        if not self._has_table("heldout_duels"):
            return []
        return self._rows("SELECT * FROM heldout_duels ORDER BY id")

    def heldout_summary(self) -> dict[str, Any] | None:
        """The held-out comparison of the chosen policy with the baseline.

        Returns
        -------
        dict or None
            ``None`` when no held-out duel was recorded. Otherwise ``chosen`` and
            ``baseline`` (names), ``tasks`` (held-out duels recorded), ``counted``
            (those with a verdict), ``unparsable``, ``failed``, ``wins`` (sum of
            the chosen policy's outcomes, ties counting 1/2), ``win_rate``
            (``wins / counted``, ``None`` when nothing was counted), ``cost`` and
            ``tokens`` spent on them.
        """
        rows = self.heldout_duels()
        if not rows:
            return None
        names = self.policy_names
        chosen, baseline = rows[0]["chosen"], rows[0]["baseline"]
        states = dict.fromkeys(HELDOUT_STATES, 0)
        wins = 0.0
        for row in rows:
            states[row["state"]] += 1
            if row["state"] == "done":
                outcome = row["outcome"]
                wins += outcome if row["policy_i"] == chosen else 1.0 - outcome
        counted = states["done"]
        return {
            "chosen": names[chosen] if chosen < len(names) else str(chosen),
            "baseline": names[baseline] if baseline < len(names) else str(baseline),
            "tasks": len(rows),
            "counted": counted,
            "unparsable": states["unparsable"],
            "failed": states["failed"],
            "wins": wins,
            "win_rate": wins / counted if counted else None,
            "cost": sum(row["cost"] for row in rows),
            "tokens": sum(
                row["generation_tokens"] + row["judge_tokens"] for row in rows
            ),
        }

    # -- reading it all ------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """Counts and spending of the run so far.

        Returns
        -------
        dict
            ``status``; ``duels``: count per state (every state present);
            ``counted``: duels done; ``generation_tokens`` and ``judge_tokens``:
            ``{"prompt", "completion"}``; ``cost``: ``{"generation", "judge",
            "total"}``; ``decisions``: number recorded.
        """
        states = dict.fromkeys(DUEL_STATES, 0)
        for row in self._rows("SELECT state, COUNT(*) AS n FROM duels GROUP BY state"):
            states[row["state"]] = row["n"]
        generation = self._row(
            "SELECT COALESCE(SUM(prompt_tokens), 0) AS prompt,"
            " COALESCE(SUM(completion_tokens), 0) AS completion,"
            " COALESCE(SUM(cost), 0.0) AS cost FROM generations"
        )
        judge = self._row(
            "SELECT COALESCE(SUM(judge_prompt_tokens), 0) AS prompt,"
            " COALESCE(SUM(judge_completion_tokens), 0) AS completion,"
            " COALESCE(SUM(judge_cost), 0.0) AS cost FROM duels"
        )
        n_decisions = self._row("SELECT COUNT(*) AS n FROM decisions")["n"]
        return {
            "status": self.status,
            "duels": states,
            "counted": states["done"],
            "generation_tokens": {
                "prompt": generation["prompt"], "completion": generation["completion"]
            },
            "judge_tokens": {
                "prompt": judge["prompt"], "completion": judge["completion"]
            },
            "cost": {
                "generation": generation["cost"],
                "judge": judge["cost"],
                "total": generation["cost"] + judge["cost"],
            },
            "decisions": n_decisions,
        }

    def export_csv(self, directory: str | Path) -> list[Path]:
        """Write each table to ``<directory>/<table>.csv``; return the files.

        ``NULL`` is written as an empty field. ``heldout_duels`` is written only
        when it has rows.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        files = []
        for table in self._exported_tables():
            columns, rows = self._table(table)
            path = directory / f"{table}.csv"
            with path.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(columns)
                writer.writerows(rows)
            files.append(path)
        return files

    def export_parquet(self, directory: str | Path) -> list[Path]:
        """Write each table to ``<directory>/<table>.parquet``; return the files.

        Column types follow the SQLite declarations (INTEGER -> int64, REAL ->
        float64, TEXT -> string), ``NULL`` stays null. ``heldout_duels`` is
        written only when it has rows.

        Raises
        ------
        StoreError
            When pyarrow is not installed (``pip install 'llmpo[export]'``).
        """
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise StoreError(
                "export_parquet: pyarrow is not installed, expected it "
                "(pip install 'llmpo[export]')"
            ) from None
        arrow_types = {"INTEGER": pa.int64(), "REAL": pa.float64(), "TEXT": pa.string()}
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        files = []
        for table in self._exported_tables():
            columns, rows = self._table(table)
            declared = {
                row["name"]: row["type"].upper()
                for row in self._rows(f"PRAGMA table_info({table})")
            }
            arrays = [
                pa.array(
                    [row[k] for row in rows],
                    type=arrow_types[declared[name]],
                )
                for k, name in enumerate(columns)
            ]
            path = directory / f"{table}.parquet"
            pq.write_table(pa.Table.from_arrays(arrays, names=columns), path)
            files.append(path)
        return files

    # ---------------------------------------------------------------------------
    # Internals

    def _configure(self) -> None:
        self._connection.execute("PRAGMA foreign_keys = ON")
        self._connection.execute("PRAGMA busy_timeout = 30000")
        if not self.readonly:
            # FULL: a committed duel survives a power cut, not only a killed process;
            # its cost is one fsync per write, small next to an LLM call.
            self._connection.execute("PRAGMA synchronous = FULL")

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        if self.readonly:
            raise StoreError(f"run store '{self.path}': opened read-only, cannot write")
        with self._lock:
            try:
                self._connection.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as error:
                raise StoreError(f"run store '{self.path}': {error}") from None
            try:
                yield
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            try:
                self._connection.execute("COMMIT")
            except sqlite3.Error as error:
                self._connection.execute("ROLLBACK")
                raise StoreError(f"run store '{self.path}': {error}") from None

    def _duel_in_state(self, duel_id: int, state: str, action: str) -> dict[str, Any]:
        duel = self._row("SELECT * FROM duels WHERE id = ?", (duel_id,))
        if duel is None:
            raise StoreError(f"run store '{self.path}': duel {duel_id} not found")
        if duel["state"] != state:
            raise StoreError(
                f"duel {duel_id}: already {duel['state']}, cannot {action} it "
                f"(only a {state} duel can be; a duel is finished once)"
            )
        return duel

    def _exported_tables(self) -> list[str]:
        tables = list(TABLES)
        for table in OPTIONAL_TABLES:
            if self._has_table(table) and self._row(f"SELECT 1 FROM {table} LIMIT 1"):
                tables.append(table)
        return tables

    def _has_table(self, table: str) -> bool:
        return self._row(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?",
            (table,),
        ) is not None

    def _table(self, table: str) -> tuple[list[str], list[tuple]]:
        with self._lock:
            cursor = self._connection.execute(f"SELECT * FROM {table} ORDER BY rowid")
            rows = cursor.fetchall()
        return [column[0] for column in cursor.description], [tuple(r) for r in rows]

    def _row(self, sql: str, parameters: Sequence[Any] = ()) -> dict[str, Any] | None:
        with self._lock:
            row = self._connection.execute(sql, parameters).fetchone()
        return None if row is None else dict(row)

    def _rows(self, sql: str, parameters: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._connection.execute(sql, parameters).fetchall()
        return [dict(row) for row in rows]


def _connect(target: str, *, uri: bool) -> sqlite3.Connection:
    """An autocommit connection returning rows by column name."""
    try:
        connection = sqlite3.connect(
            target, uri=uri, isolation_level=None, check_same_thread=False, timeout=30
        )
    except sqlite3.Error as error:
        raise StoreError(f"run store '{target}': cannot open ({error})") from None
    connection.row_factory = sqlite3.Row
    return connection


def _real(value: float | None) -> float | None:
    return None if value is None else float(value)


def _plain(value: Any) -> Any:
    """JSON form of NumPy values found in a decision."""
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _now() -> str:
    """The current time, UTC, ISO 8601 with microseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")
