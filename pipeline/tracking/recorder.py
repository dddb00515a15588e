"""The recorder of a pipeline run's records: the run in its store, and when the tracking server
stops answering mid-run, a continuation in the offline store that `python -m
pipeline.tracking.sync` uploads later."""

from __future__ import annotations

import sys

import pipeline.tracking.store as store
from pipeline.tracking.store import experiment_id, offline_uri, server_problem

SYNC_TARGET, SYNC_REMOTE_RUN, SYNC_STATUS, SYNC_REGISTER = (
    "sync.target",
    "sync.remote_run_id",
    "sync.status",
    "sync.register",
)


class Recorder:
    """Where this process's records of one pipeline run go: the run `run_id` in the store `uri`.

    When the tracking server stops answering mid-run, the records continue in a run of the
    offline store, tagged with the server and the server's run (`sync.*`), and the stage goes on:
    an outage loses neither the trained model nor the DVC outputs."""

    def __init__(self, uri: str, run_id: str, experiment_name: str, remote_run_id: str | None = None):
        self.uri, self.run_id, self.experiment_name = uri, run_id, experiment_name
        self.remote_run_id = remote_run_id  # the server's run, for an offline continuation
        self.configured_uri = uri  # the store the config names (this one, unless offline)
        self.client = store.client(uri)

    @property
    def offline(self) -> bool:
        return self.uri == offline_uri()

    def __call__(self, action):
        """Run action(client, run_id); if it fails because the server is down, go offline and
        run it there."""
        try:
            return action(self.client, self.run_id)
        except Exception as err:
            problem = None if self.offline else server_problem(self.uri)
            if problem is None:
                raise
            self.go_offline(f"{problem}; {type(err).__name__}")
            return action(self.client, self.run_id)

    def go_offline(self, problem: str) -> None:
        server, remote_run_id = self.uri, self.run_id
        print(
            f"warning: MLflow tracking server {server} is unreachable ({problem}); the records of "
            f"run {remote_run_id} continue in {offline_uri()}: upload them with `python -m "
            "pipeline.tracking.sync` when the server is back",
            file=sys.stderr,
            flush=True,
        )
        self.uri, self.client = offline_uri(), store.client(offline_uri())
        self.run_id = open_offline_run(self.experiment_name, server, remote_run_id)
        self.remote_run_id = remote_run_id


def open_offline_run(experiment_name: str, server: str, remote_run_id: str | None, run_name: str | None = None) -> str:
    """A run in the offline store holding records for the server `server`: a continuation of
    its run `remote_run_id`, or a new run there when None."""
    tags = {SYNC_TARGET: server, SYNC_STATUS: "pending"}
    if remote_run_id:
        tags[SYNC_REMOTE_RUN] = remote_run_id
    uri = offline_uri()
    return store.client(uri).create_run(experiment_id(uri, experiment_name), tags=tags, run_name=run_name).info.run_id
