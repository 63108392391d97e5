"""The results store: SQLite by default (a file path), PostgreSQL for a team (a ``postgresql://`` URL).

Owns the schema (`SCHEMA_VERSION`, created and migrated here, one step per version in `MIGRATIONS`),
writing a `records.Batch` in one transaction (`Store.write`: the same key twice keeps one row, the
later one) and reading rows back for `trends`. SQLAlchemy Core speaks both back ends; the upsert is
each dialect's ``INSERT ... ON CONFLICT DO UPDATE``.

Concurrency: SQLite takes its write lock at the start of a write (``BEGIN IMMEDIATE``) and waits up to
``timeout_s`` for another writer; PostgreSQL serialises schema changes with an advisory lock and
writes rows in key order, so two writers never deadlock. SQLite's locks rely on the file system:
keep the file on a local disk (or a PostgreSQL server) and not on Lustre, NFS, GPFS or BeeGFS, whose
locking SQLite's documentation says is unreliable (`network_filesystem` warns).

Every failure is a `StoreError` with one line: a newer schema, a locked, read-only or foreign file,
a server that does not answer, a missing driver. Nothing is half-written: a write is one transaction.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Connection, Engine

from test_case.history.records import Batch, NodeFigure, PreflightResult, RunResult, VerdictResult

SCHEMA_VERSION = 2
NETWORK_FILESYSTEMS = ("nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "smb3", "fuse.sshfs", "ceph")

metadata = sa.MetaData()
meta = sa.Table(
    "store_meta",
    metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
runs = sa.Table(
    "runs",
    metadata,
    sa.Column("cluster", sa.Text, primary_key=True),
    sa.Column("job_id", sa.Text, primary_key=True),
    sa.Column("start", sa.Integer, primary_key=True),
    sa.Column("started_at", sa.Text),
    sa.Column("stored_at", sa.Text, nullable=False),
    sa.Column("run_name", sa.Text, nullable=False),
    sa.Column("model", sa.Text),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("passed", sa.Boolean, nullable=False),
    sa.Column("device_type", sa.Text),
    sa.Column("nodes", sa.Integer),
    sa.Column("world_size", sa.Integer),
    sa.Column("nodelist", sa.Text),
    sa.Column("precision", sa.Text),
    sa.Column("max_seq_len", sa.Integer),
    sa.Column("global_batch_size", sa.Integer),
    sa.Column("configuration", sa.Text),  # configuration.describe: what runs are compared by (None: unknown)
    sa.Column("tokens_per_sec_per_device", sa.Float),
    sa.Column("mfu", sa.Float),
    sa.Column("goodput", sa.Float),
    sa.Column("stragglers", sa.Text, nullable=False),
    sa.Column("versions", sa.Text, nullable=False),  # JSON object
    sa.Column("record", sa.Text, nullable=False),  # the run's report.json record, JSON
)
preflights = sa.Table(
    "preflights",
    metadata,
    sa.Column("cluster", sa.Text, primary_key=True),
    sa.Column("job_id", sa.Text, primary_key=True),
    sa.Column("measured_at", sa.Text),
    sa.Column("stored_at", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("nodes", sa.Integer, nullable=False),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("record", sa.Text, nullable=False),
)
figures = sa.Table(
    "node_figures",
    metadata,
    sa.Column("cluster", sa.Text, primary_key=True),
    sa.Column("source", sa.Text, primary_key=True),
    sa.Column("job_id", sa.Text, primary_key=True),
    sa.Column("start", sa.Integer, primary_key=True),
    sa.Column("node", sa.Text, primary_key=True),
    sa.Column("device", sa.Text, primary_key=True),
    sa.Column("metric", sa.Text, primary_key=True),
    sa.Column("measured_at", sa.Text),
    sa.Column("device_id", sa.Text, nullable=False),
    sa.Column("value", sa.Float, nullable=False),
    sa.Column("unit", sa.Text, nullable=False),
    sa.Column("passed", sa.Boolean, nullable=False),
    sa.Column("versions", sa.Text, nullable=False),
    sa.Index("node_figures_by_metric", "cluster", "metric", "measured_at"),
)
verdicts = sa.Table(  # schema 2
    "verdicts",
    metadata,
    sa.Column("cluster", sa.Text, primary_key=True),
    sa.Column("sweep_id", sa.Text, primary_key=True),
    sa.Column("decided_at", sa.Text),
    sa.Column("stored_at", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("reasons", sa.Text, nullable=False),  # JSON list
    sa.Column("record", sa.Text, nullable=False),
)


def _create(*tables: sa.Table) -> Callable[[Connection], None]:
    def step(conn: Connection) -> None:
        for table in tables:
            table.create(conn, checkfirst=True)

    return step


# version -> the step that brings a store of the version before it to this one. A step, once landed, is
# never changed: a later version adds its tables, or its columns with ALTER TABLE, in a step of its own
# (tests/test_history.py pins every version's columns).
MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    1: _create(meta, runs, preflights, figures),
    2: _create(verdicts),  # acceptance verdicts
}


class StoreError(RuntimeError):
    """The store cannot be used as asked: one line saying which store, why, and what to do."""


def network_filesystem(path: Path, mounts: str | None = None) -> str | None:
    """The network file system ``path`` lies on (nfs, lustre, ...), from /proc/self/mounts; None on a local one."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            return None
    target = str(path.resolve())
    best, kind = "", ""
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        if (target == point or target.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, kind = point, parts[2]
    return kind if kind in NETWORK_FILESYSTEMS else None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Store:
    """A results store, opened (and created or migrated) from a path or URL (`open_store`)."""

    def __init__(self, target: str, engine: Engine, timeout_s: float) -> None:
        self.target = shown_target(target)  # in every message: a URL without its password
        self.engine = engine
        self.timeout_s = timeout_s
        self.backend = engine.dialect.name

    @contextmanager
    def _transaction(self, what: str, write: bool = True, snapshot: bool = False) -> Iterator[Connection]:
        engine = self.engine if write else self.engine.execution_options(mpt_read_only=True)
        if snapshot and self.backend == "postgresql":  # READ COMMITTED would give each SELECT its own snapshot
            engine = engine.execution_options(isolation_level="REPEATABLE READ")
        try:
            with engine.begin() as conn:
                yield conn
        except exc.DatabaseError as err:  # OperationalError, and sqlite3's "file is not a database"
            raise StoreError(self._explain(err, what, write)) from err

    def _explain(self, err: exc.DatabaseError, what: str, write: bool) -> str:
        text = _first_line(err)
        low = text.lower()
        nothing = "nothing was written" if write else "nothing was read"
        if "locked" in low or "lock timeout" in low:
            return (
                f"{self.target}: locked by another writer for more than {self.timeout_s:g} s; {nothing}: "
                "retry when it is done (or raise --store-timeout)"
            )
        if "readonly" in low or "read-only" in low or "unable to open" in low:
            if not write:
                return f"{self.target}: cannot be opened ({text}) ({nothing})"
            return f"{self.target}: cannot be written ({text}): give a writable path ({nothing})"
        if "not a database" in low:
            return f"{self.target}: not a results store ({text}): name another file; this one was not touched"
        return f"{self.target}: {what} failed ({text}): {nothing}"

    def migrate(self) -> int:
        """Create or bring the schema to `SCHEMA_VERSION`; the version found before (0: a new store)."""
        with self._transaction("creating the schema") as conn:
            if self.backend == "postgresql":  # one migration at a time across writers
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(724203401)"))
            found = self._version(conn, self.target)
            if found > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.target}: schema {found} is newer than this suite's ({SCHEMA_VERSION}): update the "
                    "suite (git pull) to use it; it was not touched"
                )
            for version in range(found + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[version](conn)
            if found < SCHEMA_VERSION:
                self._set_version(conn, SCHEMA_VERSION)
        return found

    @staticmethod
    def _version(conn: Connection, target: str) -> int:
        if not sa.inspect(conn).has_table(meta.name):
            names = sa.inspect(conn).get_table_names()
            if names:  # a database of something else: do not add our tables to it
                raise StoreError(
                    f"{target}: not a results store: it holds other tables ({', '.join(sorted(names)[:5])}); "
                    "name a new file or an empty database"
                )
            return 0
        value = conn.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
        return int(value) if value is not None else 0

    @staticmethod
    def _set_version(conn: Connection, version: int) -> None:
        conn.execute(sa.delete(meta).where(meta.c.key == "schema_version"))
        conn.execute(sa.insert(meta).values(key="schema_version", value=str(version)))

    def schema_version(self) -> int:
        with self._transaction("reading the schema", write=False) as conn:
            return self._version(conn, self.target)

    def write(self, batch: Batch) -> dict[str, tuple[int, int]]:
        """Store ``batch`` in one transaction. Per table: (rows added, rows that replaced the same key)."""
        stored_at = _now()
        rows: list[tuple[sa.Table, list[dict[str, Any]]]] = [
            (runs, [_run_row(r, stored_at) for r in batch.runs]),
            (preflights, [_preflight_row(p, stored_at) for p in batch.preflights]),
            (figures, [_figure_row(f) for f in batch.figures]),
            (verdicts, [_verdict_row(v, stored_at) for v in batch.verdicts]),
        ]
        counts: dict[str, tuple[int, int]] = {}
        with self._transaction("storing the report") as conn:
            for table, table_rows in rows:
                counts[table.name] = self._upsert(conn, table, table_rows)
        return counts

    def _upsert(self, conn: Connection, table: sa.Table, rows: list[dict[str, Any]]) -> tuple[int, int]:
        if not rows:
            return 0, 0
        key = [c.name for c in table.primary_key.columns]
        unique = {tuple(r[k] for k in key): r for r in rows}  # the same key twice in one report: the last wins
        rows = [unique[k] for k in sorted(unique)]  # key order: two writers lock rows in the same order
        present: set[tuple[Any, ...]] = set()  # the keys already stored, found by cluster and job (or sweep)
        job = "sweep_id" if table is verdicts else "job_id"
        for cluster in {r["cluster"] for r in rows}:
            jobs = sorted({r[job] for r in rows if r["cluster"] == cluster})
            for chunk in _chunks(jobs, 500):
                query = sa.select(*(table.c[k] for k in key)).where(table.c.cluster == cluster, table.c[job].in_(chunk))
                present |= {tuple(r) for r in conn.execute(query)}
        existing = sum(1 for k in unique if k in present)
        if self.backend == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            stmt: Any = pg_insert(table)
        else:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            stmt = sqlite_insert(table)
        stmt = stmt.on_conflict_do_update(
            index_elements=key, set_={c.name: stmt.excluded[c.name] for c in table.columns if c.name not in key}
        )
        conn.execute(stmt, rows)
        return len(rows) - existing, existing

    def rows(self, table: str, cluster: str | None = None, trended: bool = False) -> list[dict[str, Any]]:
        """Every row of ``table`` (runs, preflights, node_figures, verdicts), JSON columns decoded.
        ``trended``: what `trends` reads: no ``record`` column, and only the node figures it draws."""
        with self._transaction(f"reading {table}", write=False) as conn:
            return self._read(conn, table, cluster, trended)

    def snapshot(self, cluster: str) -> dict[str, list[dict[str, Any]]]:
        """What ``history show`` reads of one cluster (trended rows, verdicts whole), in one transaction."""
        with self._transaction("reading the history", write=False, snapshot=True) as conn:
            out = {t: self._read(conn, t, cluster, True) for t in ("node_figures", "runs", "preflights")}
            out["verdicts"] = self._read(conn, "verdicts", cluster, False)
        return out

    @staticmethod
    def _read(conn: Connection, table: str, cluster: str | None, trended: bool) -> list[dict[str, Any]]:
        t = metadata.tables[table]
        columns = [c for c in t.columns if not (trended and c.name == "record")]
        query = sa.select(*columns)
        if cluster is not None:
            query = query.where(t.c.cluster == cluster)
        if trended and t is figures:
            query = query.where(
                t.c.source == "preflight",
                sa.or_(t.c.metric == "matmul_tflops", t.c.metric.like("busbw\\_gbps.%", escape="\\")),
            )
        out = [dict(r._mapping) for r in conn.execute(query)]
        decoded: dict[str, Any] = {}  # most rows share a few version sets: each text decoded once
        for row in out:
            for name in ("versions", "record", "reasons"):
                if name in row:
                    text = row[name]
                    if name == "versions":
                        if text not in decoded:
                            decoded[text] = json.loads(text)
                        row[name] = decoded[text]
                    else:
                        row[name] = json.loads(text)
        return out

    def clusters(self) -> list[str]:
        with self._transaction("reading clusters", write=False) as conn:
            found: set[str] = set()
            for t in (runs, preflights, verdicts):
                found |= {r[0] for r in conn.execute(sa.select(t.c.cluster).distinct())}
        return sorted(found)

    def close(self) -> None:
        self.engine.dispose()


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _first_line(err: BaseException) -> str:
    orig = getattr(err, "orig", None)
    return (str(orig) if orig is not None else str(err)).strip().splitlines()[0] if str(err).strip() else repr(err)


def _run_row(r: RunResult, stored_at: str) -> dict[str, Any]:
    row = asdict(r) | {"stored_at": stored_at}
    row["versions"] = json.dumps(r.versions, sort_keys=True)
    row["record"] = json.dumps(r.record, sort_keys=True, default=str)
    return row


def _preflight_row(p: PreflightResult, stored_at: str) -> dict[str, Any]:
    return asdict(p) | {"stored_at": stored_at, "record": json.dumps(p.record, sort_keys=True, default=str)}


def _figure_row(f: NodeFigure) -> dict[str, Any]:
    return asdict(f) | {"versions": json.dumps(f.versions, sort_keys=True)}


def _verdict_row(v: VerdictResult, stored_at: str) -> dict[str, Any]:
    return asdict(v) | {
        "stored_at": stored_at,
        "reasons": json.dumps(v.reasons),
        "record": json.dumps(v.record, sort_keys=True, default=str),
    }


def engine_for(target: str, timeout_s: float = 30.0) -> Engine:
    """A SQLAlchemy engine for a path (SQLite) or a ``postgresql://`` URL (psycopg 3)."""
    if "://" in target:
        url = sa.make_url(target)
        if url.drivername in ("postgresql", "postgres"):
            url = url.set(drivername="postgresql+psycopg")
        if not url.drivername.startswith("postgresql"):
            raise StoreError(f"{shown_target(target)}: only SQLite files and postgresql:// URLs are supported")
        try:
            import psycopg  # noqa: F401
        except ImportError as err:
            raise StoreError(
                "a PostgreSQL store needs the psycopg driver: pip install 'psycopg[binary]' (docs/history.md)"
            ) from err
        return sa.create_engine(
            url,
            connect_args={
                "connect_timeout": max(1, int(timeout_s)),
                "options": f"-c lock_timeout={max(1, int(timeout_s * 1000))}",
            },
            pool_pre_ping=True,
        )
    path = Path(target)
    if path.is_dir():
        raise StoreError(f"{target}: a folder; give the store's file, e.g. {path / 'results.sqlite'}")
    if not path.parent.is_dir():
        raise StoreError(f"{target}: its folder {path.parent} does not exist: create it or name another path")
    engine = sa.create_engine(f"sqlite:///{path.resolve()}", connect_args={"timeout": timeout_s})

    @sa.event.listens_for(engine, "connect")
    def _no_implicit_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)

    @sa.event.listens_for(engine, "begin")
    def _write_lock_up_front(conn: Connection) -> None:
        # a write waits for another writer here, not half-way through; a read takes no lock until it reads
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get("mpt_read_only") else "BEGIN IMMEDIATE")

    return engine


def shown_target(target: str) -> str:
    """``target`` as messages show it: a URL's password replaced by ``***``."""
    if "://" not in target:
        return target
    try:
        return sa.make_url(target).render_as_string(hide_password=True)
    except (exc.ArgumentError, ValueError):  # ValueError: a port that is not a number
        return target.split("@")[-1]


def open_store(
    target: str, timeout_s: float = 30.0, warn: Callable[[str], None] | None = None, create: bool = True
) -> Store:
    """The store at ``target`` (a path or postgresql:// URL), created or migrated to `SCHEMA_VERSION`;
    with ``create=False`` (a store only read, e.g. --own-baseline) one that does not exist yet, or holds
    nothing, is an error, and nothing is created."""
    target = os.path.expanduser(target)
    if not create and "://" not in target and not Path(target).is_file():
        raise StoreError(f"{target}: no such results store: name the file that report.py --store wrote")
    if "://" not in target and warn is not None and (kind := network_filesystem(Path(target).parent)):
        warn(
            f"{target} is on {kind}: SQLite's locking is unreliable there; keep the store on a local disk "
            "or use PostgreSQL (docs/history.md)"
        )
    try:
        store = Store(target, engine_for(target, timeout_s), timeout_s)
    except (exc.ArgumentError, ValueError) as err:
        raise StoreError(f"{shown_target(target)}: not a path or database URL ({err})") from err
    try:
        if create and store.schema_version() != SCHEMA_VERSION:  # read first: the write lock only to migrate
            store.migrate()
        elif not create and (found := store.schema_version()) != SCHEMA_VERSION:
            if found == 0:
                why = "holds no results store: name the store that report.py --store wrote"
            elif found > SCHEMA_VERSION:
                why = f"schema {found} is newer than this suite's ({SCHEMA_VERSION}): update the suite (git pull)"
            else:
                why = (
                    f"schema {found} is older than this suite's ({SCHEMA_VERSION}): store a report in it (migrates it)"
                )
            raise StoreError(f"{store.target}: {why}; it was not touched")
    except StoreError:
        store.close()
        raise
    return store
