"""What a flow run shows in Prefect's UI: its name and tag, progress, tables and a summary.

Artifact keys are made from the run id (or the edits directory), so a resumed run adds a new
version of the same artifacts instead of new ones; Prefect's UI shows the latest version.
"""

from __future__ import annotations

import re
import time

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.client.orchestration import get_client
from prefect.runtime import flow_run


def artifact_key(*parts: str) -> str:
    """A valid artifact key (lowercase letters, digits and dashes) from `parts`."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def label_flow_run(kind: str, run_id: str) -> None:
    """Name the current flow run after its run id and tag it with it, for the UI's filters."""
    with get_client(sync_client=True) as client:
        current = client.read_flow_run(flow_run.id)
        client.update_flow_run(flow_run.id, name=f"{kind}-{run_id}", tags=sorted({*current.tags, f"run-id:{run_id}"}))


class Progress:
    """A progress artifact counting finished units of work.

    It is sent at most once per `interval` seconds, and always when the work is done: each
    update is a round trip to the API (30-40 ms with a local server), which small, fast shards
    would otherwise pay every time.
    """

    def __init__(self, key: str, total: int, description: str, *, interval: float = 2.0) -> None:
        self.total, self.done, self.description, self.interval = max(total, 1), 0, description, interval
        self.id = create_progress_artifact(progress=0.0, key=key, description=description)
        self._sent = time.monotonic()

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if self.done >= self.total or now - self._sent >= self.interval:
            update_progress_artifact(self.id, progress=100.0 * min(self.done, self.total) / self.total, description=self.description)
            self._sent = now
