"""Per-sample HFLD refinement: lowers landmark drift, keeps the attribute, ignores batch composition."""

from __future__ import annotations

import pytest
import torch

from pipeline.editing.directions import Direction
from pipeline.editing.hfld import HFLDLoss
from pipeline.editing.latent_classifier import LatentClassifier
from pipeline.editing.preservation import PreservationLoss
from pipeline.editing.refine import RefinementConfig, refine_edits
from pipeline.editing.synthetic import TinyGenerator, TinyLandmarks
from pipeline.errors import ConfigError

SHAPE = (8,)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def setup() -> tuple[PreservationLoss, LatentClassifier, Direction]:
    normal = torch.randn(8, generator=torch.Generator().manual_seed(3))
    normal = normal / normal.norm()
    classifier = LatentClassifier(SHAPE, ["age"], hidden=())
    with torch.no_grad():
        classifier.net[0].weight.copy_(4 * normal[None])
        classifier.net[0].bias.zero_()
    hfld = PreservationLoss(HFLDLoss(TinyGenerator(SHAPE), TinyLandmarks(8, num_points=3), weight=100.0, iod=(0, 1)))
    return hfld, classifier, Direction(name="age", vector=normal, latent_shape=SHAPE)


def test_refinement_lowers_hfld_and_keeps_the_target(setup) -> None:
    hfld, classifier, direction = setup
    source = torch.randn(12, *SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        add = classifier(source)[:, 0] < 0
    strength = torch.where(add, 2.0, -2.0)
    edited = direction.edit(source, strength)
    config = RefinementConfig(steps=60, lr=0.05, margin=1.0)

    result = refine_edits(edited, source, preservation=hfld, classifier=classifier, attribute="age", add=add, config=config)

    assert torch.all(result.preservation_after < result.preservation_before)
    assert result.preservation_after.mean() < 0.5 * result.preservation_before.mean()
    sign = torch.where(add, 1.0, -1.0)
    reached = sign * result.target_logit_before > config.margin
    # Edits that were past the margin stay past it (up to the hinge's slack); none flips back.
    assert torch.all(sign[reached] * result.target_logit_after[reached] > 0.8 * config.margin)
    assert torch.all(sign * result.target_logit_after > 0)
    with torch.no_grad():
        assert torch.allclose(hfld(result.latents, hfld.reference(source), reduction="none"), result.preservation_after)


def test_each_sample_is_refined_independently_of_its_batch(setup) -> None:
    hfld, classifier, direction = setup
    source = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(1))
    edited = direction.edit(source, 1.5)
    config = RefinementConfig(steps=10, lr=0.05)

    together = refine_edits(edited, source, preservation=hfld, classifier=classifier, attribute="age", add=True, config=config)
    alone = refine_edits(
        edited[2:3], source[2:3], preservation=hfld, classifier=classifier, attribute="age", add=True, config=config
    )

    assert torch.allclose(together.latents[2:3], alone.latents, atol=1e-6)


def test_zero_steps_return_the_edit_unchanged(setup) -> None:
    hfld, classifier, direction = setup
    source = torch.randn(3, *SHAPE)
    edited = direction.edit(source, 1.0)
    result = refine_edits(
        edited, source, preservation=hfld, classifier=classifier, attribute="age", add=True, config=RefinementConfig(steps=0)
    )
    assert torch.equal(result.latents, edited)
    assert torch.equal(result.preservation_after, result.preservation_before)


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ConfigError, match="lr > 0"):
        RefinementConfig(lr=0.0)
