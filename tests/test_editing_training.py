"""Editor training: the loss falls, HFLD lowers landmark drift, resumption is bit-identical."""

from __future__ import annotations

import pytest
import torch

from pipeline.editing.directions import Direction
from pipeline.editing.editor import LatentEditor
from pipeline.editing.hfld import HFLDLoss, landmark_shift
from pipeline.editing.preservation import PreservationLoss
from pipeline.editing.latent_classifier import LatentClassifier
from pipeline.editing.synthetic import TinyGenerator, TinyLandmarks
from pipeline.editing.training import EditorTrainer, EditorTrainingConfig, TrainingProgress, batch_indices
from pipeline.errors import CheckpointError, ConfigError

SHAPE = (2, 4)


pytestmark = pytest.mark.usefixtures("one_thread")


class Problem:
    """W+-shaped latents whose attributes are known linear functions, read by an exact classifier."""

    def __init__(self, seed: int = 0) -> None:
        self.latents = torch.randn(256, *SHAPE, generator=torch.Generator().manual_seed(seed))
        normals = torch.randn(8, 3, generator=torch.Generator().manual_seed(99))
        normals[:, 2] = normals[:, 0] + 0.3 * normals[:, 2]  # "c" correlates with "a"
        self.normals = normals / normals.norm(dim=0)
        self.classifier = LatentClassifier(SHAPE, ["a", "b", "c"], hidden=())
        with torch.no_grad():
            self.classifier.net[0].weight.copy_(4 * self.normals.T)
            self.classifier.net[0].bias.zero_()
            # Scores n_i . w of standard normal latents correlate by n_i . n_j.
            self.classifier.label_correlation.copy_(self.normals.T @ self.normals)
        self.direction = Direction(name="a", vector=self.normals[:, 0].reshape(SHAPE), latent_shape=SHAPE)
        self.generator = TinyGenerator(SHAPE, resolution=8)
        self.landmarks = TinyLandmarks(8, num_points=2, dims=2)

    def trainer(
        self, config: EditorTrainingConfig, *, weight: float = 0.0, editor: LatentEditor | None = None
    ) -> EditorTrainer:
        hfld = HFLDLoss(self.generator, self.landmarks, weight=weight)
        editor = editor or LatentEditor.from_direction(self.direction)
        return EditorTrainer(editor, self.classifier, self.latents, config, preservation=PreservationLoss(hfld))


def test_batches_cover_each_epoch_once() -> None:
    seen = torch.cat([batch_indices(50, 8, seed=3, step=step) for step in range(25)])  # 4 epochs
    for epoch in range(4):
        assert sorted(seen[epoch * 50 : (epoch + 1) * 50].tolist()) == list(range(50))
    assert not torch.equal(seen[:50], seen[50:100])


def test_training_reduces_the_loss_from_an_identity_editor() -> None:
    problem = Problem()
    config = EditorTrainingConfig(attribute="a", steps=150, lr=1e-2)
    trainer = problem.trainer(config, editor=LatentEditor(SHAPE, attribute="a", init="zero"))
    history: list[dict[str, float]] = []

    trainer.run(callback=lambda progress: history.append(progress.losses))

    assert len(history) == 150
    first = sum(h["total"] for h in history[:15]) / 15
    last = sum(h["total"] for h in history[-15:]) / 15
    assert last < 0.7 * first
    # An identity editor reaches no flipped label; the trained one reaches most of them.
    assert sum(h["success"] for h in history[:15]) / 15 < 0.2
    assert sum(h["success"] for h in history[-15:]) / 15 > 0.6


def test_hfld_lowers_landmark_drift_at_similar_attribute_success() -> None:
    problem = Problem()
    config = EditorTrainingConfig(attribute="a", steps=300, lr=1e-2, hfld_fraction=0.5)
    held_out = torch.randn(128, *SHAPE, generator=torch.Generator().manual_seed(5))
    measure = HFLDLoss(problem.generator, problem.landmarks)
    with torch.no_grad():
        probability = torch.sigmoid(problem.classifier(held_out)[:, 0])
    target = (probability < 0.5).float()

    results = {}
    for weight in (0.0, 10.0):
        trainer = problem.trainer(config, weight=weight)
        trainer.run()
        with torch.no_grad():
            edited = trainer.editor(held_out, target - probability)
            drift = landmark_shift(measure.detect(edited), measure.detect(held_out)).mean()
            success = ((problem.classifier(edited)[:, 0] > 0).float() == target).float().mean()
        results[weight] = float(drift), float(success)

    (base_drift, base_success), (hfld_drift, hfld_success) = results[0.0], results[10.0]
    assert hfld_drift < 0.85 * base_drift
    assert hfld_success > base_success - 0.05


def test_keep_loss_ignores_the_target_and_discounts_correlated_attributes() -> None:
    problem = Problem()
    trainer = problem.trainer(EditorTrainingConfig(attribute="a"))
    correlation = problem.classifier.label_correlation[0].abs()
    assert trainer.keep_mask[0] == 0.0
    assert torch.allclose(trainer.keep_mask[1:], 1 - correlation[1:])
    assert trainer.keep_mask[2] < trainer.keep_mask[1]  # "c" is the correlated one


class Interrupt(Exception):
    pass


def test_resuming_from_a_checkpoint_is_bit_identical(tmp_path) -> None:
    config = EditorTrainingConfig(
        attribute="a", steps=9, checkpoint_every=3, hfld_fraction=0.5, strength="uniform", seed=5
    )

    uninterrupted = Problem().trainer(config, weight=1.0, editor=LatentEditor(SHAPE, attribute="a", seed=1))
    expected_losses = uninterrupted.run()

    def crash_at_step_7(progress: TrainingProgress) -> None:
        if progress.step == 7:
            raise Interrupt

    checkpoint = tmp_path / "editor.ckpt"
    crashed = Problem().trainer(config, weight=1.0, editor=LatentEditor(SHAPE, attribute="a", seed=1))
    with pytest.raises(Interrupt):
        crashed.run(checkpoint=checkpoint, callback=crash_at_step_7)
    resumed = Problem().trainer(config, weight=1.0, editor=LatentEditor(SHAPE, attribute="a", seed=1))
    steps_seen: list[int] = []
    losses = resumed.run(checkpoint=checkpoint, callback=lambda progress: steps_seen.append(progress.step))

    assert steps_seen == [7, 8, 9]  # continued from the step-6 checkpoint
    assert losses == expected_losses
    for name, tensor in uninterrupted.editor.state_dict().items():
        assert torch.equal(resumed.editor.state_dict()[name], tensor), name
    expected_state = uninterrupted.optimizer.state_dict()["state"]
    for index, state in resumed.optimizer.state_dict()["state"].items():
        for key, value in state.items():
            assert torch.equal(value, expected_state[index][key]), (index, key)
    # The finished run's checkpoint resumes to nothing left to do.
    assert (
        Problem()
        .trainer(config, weight=1.0, editor=LatentEditor(SHAPE, attribute="a", seed=1))
        .run(checkpoint=checkpoint)
        == {}
    )


def test_a_checkpoint_of_another_run_is_refused(tmp_path) -> None:
    config = EditorTrainingConfig(attribute="a", steps=2, checkpoint_every=1)
    checkpoint = tmp_path / "editor.ckpt"
    Problem().trainer(config).run(checkpoint=checkpoint)

    longer = EditorTrainingConfig(attribute="a", steps=4, checkpoint_every=1)
    assert Problem().trainer(longer).run(checkpoint=checkpoint)  # more steps: same run, continues
    with pytest.raises(CheckpointError, match="fields seed differ"):
        Problem().trainer(EditorTrainingConfig(attribute="a", steps=4, seed=1)).run(checkpoint=checkpoint)
    with pytest.raises(CheckpointError, match="other latents"):
        Problem(seed=1).trainer(longer).run(checkpoint=checkpoint)
    with pytest.raises(CheckpointError, match="HFLD"):
        Problem().trainer(longer, weight=2.0).run(checkpoint=checkpoint)
    (tmp_path / "junk.ckpt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="cannot read"):
        Problem().trainer(longer).run(checkpoint=tmp_path / "junk.ckpt")


def test_invalid_configuration_is_refused() -> None:
    with pytest.raises(ConfigError, match="hfld_fraction"):
        EditorTrainingConfig(attribute="a", hfld_fraction=0.0)
    with pytest.raises(ConfigError, match="predicts"):
        Problem().trainer(EditorTrainingConfig(attribute="smile"))
