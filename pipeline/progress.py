"""How far a run has got, counted in faces and edits from what is on disk.

Counting files rather than listening to the renderer works the same for every runner: shards
rendered in this process, on Dask workers or by flow runs on other machines. A finished shard
(its Parquet file exists) counts in full without a look at its images; an unfinished one counts
the images it has written so far, sources and edits apart by their names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import RunConfig
from pipeline.editing.plan import plan_edits
from pipeline.storage.layout import shard_images, shard_path, shard_seeds


@dataclass(frozen=True)
class Count:
    faces: int
    edits: int


class RunProgress:
    """The faces and edits of `shards` of a run that exist so far, against their totals."""

    def __init__(self, config: RunConfig, run_dir: Path, shards: list[int]) -> None:
        self.run_dir = Path(run_dir)
        self.edits_per_face = len(plan_edits(config))
        self._sizes = {index: len(shard_seeds(config, index)) for index in shards}
        self._finished: set[int] = set()
        faces = sum(self._sizes.values())
        self.total = Count(faces, faces * self.edits_per_face)

    def count(self) -> Count:
        faces = edits = 0
        for index, size in self._sizes.items():
            if index not in self._finished and shard_path(self.run_dir, index).exists():
                self._finished.add(index)
            if index in self._finished:
                faces, edits = faces + size, edits + size * self.edits_per_face
                continue
            sources, edited = _count_images(self.run_dir / shard_images(index))
            faces, edits = faces + sources, edits + edited
        return Count(faces, edits)


def _count_images(folder: Path) -> tuple[int, int]:
    """(sources, edits) written into a shard's image folder: `seed-N.png` and `seed-N-<edit>.png`."""
    sources = edits = 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0, 0
    for entry in entries:
        name = entry.name
        if name.startswith("seed-") and name.endswith(".png"):
            if "-" in name[len("seed-") : -len(".png")]:
                edits += 1
            else:
                sources += 1
    return sources, edits
