"""The latent editor: initialised from a direction it is the linear edit, bit for bit."""

from __future__ import annotations

import pytest
import torch

from pipeline.editing.directions import Direction
from pipeline.editing.editor import LatentEditor, load_editor, save_editor
from pipeline.errors import CheckpointError, ConfigError


pytestmark = pytest.mark.usefixtures("one_thread")


def unit(*shape: int, seed: int = 0) -> torch.Tensor:
    vector = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return vector / vector.norm()


CASES = [
    # (latent shape, direction vector shape, editor mode)
    ((10,), (10,), None),  # z latent, whole
    ((3, 4), (3, 4), "per_layer"),  # W+ direction, one row per layer
    ((3, 4), (4,), "per_layer"),  # shared W direction copied into every layer's bias
    ((3, 4), (4,), "shared"),  # shared W direction, one map for all layers
    ((3, 4), (3, 4), "whole"),  # W+ flattened
]


@pytest.mark.parametrize(("latent_shape", "vector_shape", "mode"), CASES)
def test_from_direction_reproduces_the_linear_edit_exactly(latent_shape, vector_shape, mode) -> None:
    direction = Direction(name="age", vector=unit(*vector_shape), latent_shape=latent_shape)
    editor = LatentEditor.from_direction(direction, mode=mode)
    latents = torch.randn(6, *latent_shape, generator=torch.Generator().manual_seed(1))
    strengths = torch.tensor([-3.0, -1.0, -0.25, 0.0, 0.5, 2.0])

    with torch.no_grad():
        assert torch.equal(editor(latents, strengths), direction.edit(latents, strengths))
        assert torch.equal(editor(latents, 1.5), direction.edit(latents, 1.5))
        assert torch.equal(editor(latents, 0.0), latents)


def test_a_shared_editor_refuses_a_direction_that_differs_per_layer() -> None:
    direction = Direction(name="age", vector=unit(3, 4), latent_shape=(3, 4))
    with pytest.raises(ConfigError, match="use mode 'per_layer'"):
        LatentEditor.from_direction(direction, mode="shared")


def test_the_edit_is_affine_in_the_latent_with_per_layer_maps() -> None:
    editor = LatentEditor((3, 4), attribute="age", init="random", seed=3)
    with torch.no_grad():
        editor.bias.normal_(generator=torch.Generator().manual_seed(4))
    latents = torch.randn(5, 3, 4, generator=torch.Generator().manual_seed(5))

    with torch.no_grad():
        edited = editor(latents, 0.7)
    weight = editor.weight / 2.0  # equalised learning rate: 1 / sqrt(w_dim = 4)
    expected = latents + 0.7 * (torch.einsum("lij,nlj->nli", weight, latents) + editor.bias)
    assert torch.allclose(edited, expected, atol=1e-6)
    # Layers do not leak into each other: changing layer 0 leaves layers 1 and 2 alone.
    moved = latents.clone()
    moved[:, 0] += 1.0
    with torch.no_grad():
        assert torch.equal(editor(moved, 0.7)[:, 1:], edited[:, 1:])


def test_random_initialisation_follows_its_seed_only() -> None:
    torch.manual_seed(0)
    first = LatentEditor((3, 4), attribute="a", seed=11)
    torch.manual_seed(1)
    second = LatentEditor((3, 4), attribute="a", seed=11)
    third = LatentEditor((3, 4), attribute="a", seed=12)
    assert torch.equal(first.weight, second.weight)
    assert not torch.equal(first.weight, third.weight)
    assert torch.equal(first.bias, torch.zeros(3, 4))


def test_modes_need_w_plus_latents() -> None:
    with pytest.raises(ConfigError, match="use 'whole'"):
        LatentEditor((10,), attribute="a", mode="per_layer")


def test_round_trip(tmp_path) -> None:
    editor = LatentEditor((3, 4), attribute="gender", mode="shared", seed=2)
    with torch.no_grad():
        editor.bias.fill_(0.25)
    path = save_editor(editor, tmp_path / "gender.safetensors", extra={"lambda": 1.0})

    loaded = load_editor(path, latent_shape=(3, 4))

    latents = torch.randn(4, 3, 4)
    with torch.no_grad():
        assert torch.equal(loaded(latents, 1.0), editor(latents, 1.0))
    assert loaded.config == editor.config
    with pytest.raises(CheckpointError, match=r"latent shape \(3, 4\), the generator has \(100,\)"):
        load_editor(path, latent_shape=(100,))
