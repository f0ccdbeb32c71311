"""exprlock's safetensors files: the kind, version and bytes are checked before anything is used."""

from __future__ import annotations

from pathlib import Path

import pytest
import safetensors.torch
import torch

from pipeline.editing.editor import LatentEditor, load_editor, read_editor_record, save_editor
from pipeline.editing.latent_classifier import load_latent_classifier
from pipeline.editing.storage import read_checked
from pipeline.errors import CheckpointError


def write(path: Path, metadata: dict[str, str]) -> Path:
    path.write_bytes(safetensors.torch.save({"vector": torch.ones(3)}, metadata=metadata))
    return path


def test_a_file_of_the_named_format_is_read_whole_or_as_metadata(tmp_path: Path) -> None:
    path = write(tmp_path / "a.safetensors", {"format": "kind", "format_version": "2", "note": "x"})
    metadata, tensors = read_checked(path, format="kind", version=2, what="thing")
    assert metadata["note"] == "x" and torch.equal(tensors["vector"], torch.ones(3))
    assert read_checked(path, format="kind", version=2, what="thing", tensors=False) == (metadata, {})


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"format": "other"}, r"a.safetensors: not an exprlock thing \(format 'other'\)"),
        ({}, r"not an exprlock thing \(format None\)"),
        ({"format": "kind", "format_version": "3"}, r"thing format version 3 is newer than 2; upgrade exprlock"),
    ],
)
def test_another_kind_or_a_newer_version_is_refused(tmp_path: Path, metadata: dict[str, str], message: str) -> None:
    path = write(tmp_path / "a.safetensors", metadata)
    with pytest.raises(CheckpointError, match=message):
        read_checked(path, format="kind", version=2, what="thing")


def test_missing_and_damaged_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"gone.safetensors: thing file not found"):
        read_checked(tmp_path / "gone.safetensors", format="kind", version=1, what="thing")
    path = write(tmp_path / "a.safetensors", {"format": "kind"})
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(CheckpointError, match=r"a.safetensors: cannot read the thing"):
        read_checked(path, format="kind", version=1, what="thing")


def test_an_editor_is_not_taken_for_a_classifier_and_keeps_its_record(tmp_path: Path) -> None:
    path = save_editor(LatentEditor((4,), attribute="age", seed=1), tmp_path / "age.safetensors", extra={"step": 7})
    with pytest.raises(CheckpointError, match=r"not an exprlock latent classifier \(format 'exprlock-latent-editor'\)"):
        load_latent_classifier(path)
    assert read_editor_record(path) == {"step": 7}
    assert load_editor(path).attribute == "age"
