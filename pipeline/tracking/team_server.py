"""A team's MLflow tracking server: runs in PostgreSQL, artifacts in a folder, one command.

    python -m pipeline.tracking.team_server --db postgresql://USER:PASSWORD@HOST:5432/mlflow \\
        --artifacts /shared/mlartifacts --host 127.0.0.1 --port 5000
    dvc exp run -S mlflow.tracking_uri=http://127.0.0.1:5000     # the pipeline needs nothing else

The database is created if the role may create databases and it does not exist yet; MLflow
creates its tables on first start. Clients upload artifacts through the server (--serve-artifacts),
so they need no access to the folder. Extra `mlflow server` options follow `--`, e.g.
`-- --allowed-hosts mlflow.example.com` when serving beyond loopback. No TensorFlow import.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pipeline.core.errors import PipelineError, run_command


class TeamServerError(PipelineError):
    """The database cannot serve as the MLflow store (wrong URI, unreachable, no rights)."""


def redacted(uri: str) -> str:
    """The URI without its password, for messages."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def ensure_database(uri: str) -> bool:
    """Check that the PostgreSQL database in `uri` is reachable, creating it when missing (the
    role needs CREATEDB for that). Returns True when it was created."""
    import psycopg
    from psycopg import sql

    parts = urlsplit(uri)
    if parts.scheme.split("+")[0] not in ("postgresql", "postgres"):
        raise TeamServerError(f"--db {redacted(uri)}: expected a postgresql:// URI")
    database = parts.path.lstrip("/")
    if not database:
        raise TeamServerError(f"--db {redacted(uri)}: no database name after the host")
    server = {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 5432,
        "user": parts.username,
        "password": parts.password,
        "connect_timeout": 5,
    }
    try:
        psycopg.connect(dbname=database, **server).close()
        return False
    except psycopg.OperationalError as err:
        if f'database "{database}" does not exist' not in str(err):
            raise TeamServerError(f"PostgreSQL at {redacted(uri)}: {str(err).strip()}") from None
    try:  # CREATE DATABASE cannot run in a transaction
        with psycopg.connect(dbname="postgres", autocommit=True, **server) as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    except psycopg.Error as err:
        raise TeamServerError(
            f"PostgreSQL at {redacted(uri)}: database {database!r} does not exist and could not "
            f"be created ({str(err).strip()}); create it, or grant the role CREATEDB"
        ) from None
    return True


def server_command(db: str, artifacts: Path, host: str, port: int, workers: int, extra: list[str]) -> list[str]:
    """The `mlflow server` command line of a team server."""
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    return [
        mlflow,
        "server",
        "--backend-store-uri",
        db,
        "--serve-artifacts",
        "--artifacts-destination",
        str(artifacts.resolve()),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
        *extra,
    ]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--db",
        default=os.environ.get("MLFLOW_TEAM_DB"),
        help="postgresql://USER:PASSWORD@HOST:PORT/DATABASE (default: $MLFLOW_TEAM_DB)",
    )
    parser.add_argument(
        "--artifacts",
        type=Path,
        default=Path("mlartifacts-team"),
        help="the artifact root folder (default: ./mlartifacts-team)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="default: loopback only")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(own)
    if not args.db:
        parser.error("--db (or MLFLOW_TEAM_DB) is required: postgresql://USER:PASSWORD@HOST:PORT/DATABASE")
    if ensure_database(args.db):
        print(f"created database {urlsplit(args.db).path.lstrip('/')}", flush=True)
    args.artifacts.mkdir(parents=True, exist_ok=True)
    command = server_command(args.db, args.artifacts, args.host, args.port, args.workers, extra)
    print(
        f"MLflow team server on http://{args.host}:{args.port}: runs in {redacted(args.db)}, "
        f"artifacts in {args.artifacts.resolve()}",
        flush=True,
    )
    os.execv(command[0], command)  # the server is this process: signals reach it directly


if __name__ == "__main__":
    run_command(main)
