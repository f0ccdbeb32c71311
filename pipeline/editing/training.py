"""Training one latent editor: the Latent Transformer's loss, plus the preservation terms.

The base loss is that of Yao et al. (ICCV 2021; InterDigitalInc/latent-transformer,
`trainer.Trainer.compute_loss`), with the weights of its released configuration:

    1  * BCE(classifier(w')_target, flipped label)       reach the other side of the attribute
    10 * MSE(w', w)                                       stay close to the source latent
    1  * sum_k (1 - |corr(target, k)|) * MSE(logit_k(w'), logit_k(w))   keep other attributes

trained with Adam (lr 1e-3, betas 0.9/0.999, weight decay 5e-4) on batches of 32 latents. The
label to reach is the classifier's current prediction flipped; in the reference code the
strength of each sample is the distance from its probability to that label (`target - p`, in
[-1, 1]), so samples already close to the boundary move less. The BCE is balanced between the
two targets within a batch, and attributes whose label correlation with the target is at least
`correlation_threshold` get weight 0, as in the reference. Where the reference averages the
masked logits over attributes, this sums the weighted per-attribute MSEs, the form written above.

He and McGough (arXiv 2505.06436) add `lambda * HFLD(w, w')`, which needs the generator and
the landmark detector on every edited sample; a `PreservationLoss` may add emotion and identity
terms read from the same renders. Rendering dominates the cost of a step, so these terms are
computed on the first `ceil(hfld_fraction * batch_size)` samples of each batch only.

Every random choice of step `t` (the batch, the strengths) is drawn from a random state derived
from `(seed, t)`, so a run resumed from a checkpoint (editor, Adam state, step) continues
bit-identically to an uninterrupted one, and two runs with the same seed agree.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from pipeline.editing.directions import check_latents
from pipeline.editing.editor import LatentEditor
from pipeline.editing.latent_classifier import LatentClassifier
from pipeline.editing.preservation import PreservationLoss
from pipeline.errors import CheckpointError, ConfigError
from pipeline.images import write_atomic

StrengthMode = Literal["latent_transformer", "uniform"]

CHECKPOINT_FORMAT = "exprlock-editor-training"
CHECKPOINT_VERSION = 1
# Fields that may change between a checkpoint and its resumption without changing the run.
RESUMABLE_CHANGES = frozenset({"steps", "checkpoint_every"})


@dataclass(frozen=True)
class EditorTrainingConfig:
    """Hyper-parameters of one editor's training; the defaults are the reference code's.

    Attributes:
        attribute: the classifier output to edit.
        steps: total optimisation steps (a resumed run continues up to this number).
        batch_size, lr, betas, weight_decay: Adam on batches of latents.
        classification_weight, latent_weight, keep_weight: the three base loss weights.
        hfld_fraction: share of each batch (rounded up) rendered for the preservation terms.
        strength: "latent_transformer" draws nothing (strength = flipped label - probability);
            "uniform" draws |a| uniformly from `strength_range`, signed towards the flipped label.
        balance_classes: weight the BCE so both target labels count equally within a batch.
        correlation_threshold: attributes at least this correlated with the target are not kept.
        seed: the source of every random choice (batch order, strengths).
        checkpoint_every: steps between checkpoints when a checkpoint path is given.
    """

    attribute: str
    steps: int = 10_000
    batch_size: int = 32
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 5e-4
    classification_weight: float = 1.0
    latent_weight: float = 10.0
    keep_weight: float = 1.0
    hfld_fraction: float = 0.25
    strength: StrengthMode = "latent_transformer"
    strength_range: tuple[float, float] = (0.5, 1.5)
    balance_classes: bool = True
    correlation_threshold: float = 1.0
    seed: int = 0
    checkpoint_every: int = 500

    def __post_init__(self) -> None:
        positive = {
            "steps": self.steps,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "checkpoint_every": self.checkpoint_every,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"editor training {name}: expected a positive value, got {value}")
        if not 0 < self.hfld_fraction <= 1:
            raise ConfigError(f"editor training hfld_fraction: expected a value in (0, 1], got {self.hfld_fraction}")
        if self.strength not in ("latent_transformer", "uniform"):
            raise ConfigError(
                f"editor training strength: expected 'latent_transformer' or 'uniform', got {self.strength!r}"
            )
        low, high = self.strength_range
        if not 0 <= low <= high:
            raise ConfigError(f"editor training strength_range: expected 0 <= low <= high, got {self.strength_range}")
        if not 0 <= self.seed < 2**62:
            raise ConfigError(f"editor training seed: expected an integer in [0, 2**62), got {self.seed}")

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON values (tuples as lists), as stored in checkpoints."""
        return json.loads(json.dumps(asdict(self)))


@dataclass(frozen=True)
class TrainingProgress:
    """What a progress hook sees after each step."""

    step: int
    steps: int
    losses: dict[str, float]


def _random_state(seed: int, stream: int, index: int) -> torch.Generator:
    """A CPU random state for (seed, stream, index), independent of every other triple."""
    mixed = (seed * 0x9E3779B97F4A7C15 + stream * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) % (2**63)
    return torch.Generator().manual_seed(mixed)


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, shapes, dtypes and bytes: identifies the data a checkpoint belongs to."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def batch_indices(num_latents: int, batch_size: int, *, seed: int, step: int) -> torch.Tensor:
    """Pool indices of step `step`: consecutive slices of one random permutation per epoch."""
    positions = torch.arange(step * batch_size, (step + 1) * batch_size)
    epochs = positions // num_latents
    indices = torch.empty(batch_size, dtype=torch.long)
    for epoch in torch.unique(epochs).tolist():
        permutation = torch.randperm(num_latents, generator=_random_state(seed, 0, epoch))
        chosen = epochs == epoch
        indices[chosen] = permutation[positions[chosen] % num_latents]
    return indices


class EditorTrainer:
    """Trains `editor` against a frozen latent classifier, optionally with preservation terms.

    Args:
        editor: the editor to train (e.g. `LatentEditor.from_direction(direction)`); updated in place.
        classifier: predicts the attribute logits; used as given (eval mode, not updated).
        latents: the training pool `(N, *latent_shape)`, on any device; batches move to the editor's.
        config: hyper-parameters, see `EditorTrainingConfig`.
        preservation: HFLD (its `weight` is lambda) and further terms; None or no positive
            weight trains the base editor and never renders.
    """

    def __init__(
        self,
        editor: LatentEditor,
        classifier: LatentClassifier,
        latents: torch.Tensor,
        config: EditorTrainingConfig,
        *,
        preservation: PreservationLoss | None = None,
    ) -> None:
        check_latents(latents, editor.latent_shape, what="training latents")
        if tuple(classifier.latent_shape) != editor.latent_shape:
            raise ConfigError(
                f"latent classifier is for latent shape {tuple(classifier.latent_shape)}, "
                f"the editor for {editor.latent_shape}"
            )
        self.target = classifier.index(config.attribute)
        self.editor = editor
        self.classifier = classifier
        self.latents = latents.detach()
        self.config = config
        self.preservation = preservation if preservation is not None and preservation.active else None
        self.step = 0
        self.optimizer = torch.optim.Adam(
            editor.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
        )
        correlation = classifier.label_correlation[self.target].abs()
        keep = 1 - correlation
        keep[correlation >= config.correlation_threshold] = 0
        keep[self.target] = 0
        self.keep_mask = keep.detach()
        self.inputs_digest = {
            "latents": tensor_digest({"latents": self.latents}),
            "classifier": tensor_digest(classifier.state_dict()),
        }

    @property
    def device(self) -> torch.device:
        return self.editor.bias.device

    def losses(self, source: torch.Tensor, random_state: torch.Generator) -> dict[str, torch.Tensor]:
        """Every loss term of one batch of sources; `total` is what is minimised.

        Also `success`, the share of the batch whose edit reaches the flipped label (no gradient).
        `random_state` draws the strengths in "uniform" mode.
        """
        config = self.config
        with torch.no_grad():
            logits_source = self.classifier(source)
        probability = torch.sigmoid(logits_source[:, self.target])
        target = (probability < 0.5).to(source.dtype)
        if config.strength == "latent_transformer":
            strength = target - probability
        else:
            low, high = config.strength_range
            magnitude = low + (high - low) * torch.rand(len(source), generator=random_state)
            strength = (2 * target - 1) * magnitude.to(source.device, source.dtype)
        edited = self.editor(source, strength)
        logits_edit = self.classifier(edited)
        bce = nn.functional.binary_cross_entropy_with_logits(logits_edit[:, self.target], target, reduction="none")
        if config.balance_classes:
            positives = target.sum()
            weights = len(target) / (positives + 1e-8) * target + len(target) / (len(target) - positives + 1e-8) * (
                1 - target
            )
            bce = bce * weights
        terms = {
            "classification": bce.mean(),
            "latent": nn.functional.mse_loss(edited, source),
            "keep": ((logits_edit - logits_source).square().mean(dim=0) * self.keep_mask.to(source.device)).sum(),
        }
        terms["total"] = (
            config.classification_weight * terms["classification"]
            + config.latent_weight * terms["latent"]
            + config.keep_weight * terms["keep"]
        )
        if self.preservation is not None:
            count = math.ceil(config.hfld_fraction * len(source))
            values = self.preservation.per_term(edited[:count], self.preservation.reference(source[:count]))
            weights = self.preservation.weights()
            for name, value in values.items():
                terms["hfld" if name == "landmarks" else name] = weights[name] * value.mean()
            terms["total"] = terms["total"] + self.preservation.weighted(values).mean()
        with torch.no_grad():
            terms["success"] = ((logits_edit[:, self.target] > 0).to(source.dtype) == target).to(source.dtype).mean()
        return terms

    def train_step(self) -> dict[str, float]:
        """One optimisation step on the batch that `(seed, step)` selects."""
        config = self.config
        indices = batch_indices(len(self.latents), config.batch_size, seed=config.seed, step=self.step)
        source = self.latents[indices.to(self.latents.device)].to(self.device)
        terms = self.losses(source, _random_state(config.seed, 1, self.step))
        self.optimizer.zero_grad(set_to_none=True)
        terms["total"].backward(inputs=list(self.editor.parameters()))
        self.optimizer.step()
        self.step += 1
        return {name: float(value.detach()) for name, value in terms.items()}

    def run(
        self,
        *,
        checkpoint: str | os.PathLike | None = None,
        callback: Callable[[TrainingProgress], None] | None = None,
    ) -> dict[str, float]:
        """Train up to `config.steps`, resuming from `checkpoint` when that file exists.

        A checkpoint is written every `checkpoint_every` steps and at the end; returns the
        losses of the last step (empty when there was nothing left to do).
        """
        path = Path(checkpoint) if checkpoint is not None else None
        if path is not None and path.exists():
            self.load_checkpoint(path)
        losses: dict[str, float] = {}
        while self.step < self.config.steps:
            losses = self.train_step()
            if callback is not None:
                callback(TrainingProgress(self.step, self.config.steps, losses))
            if path is not None and (self.step % self.config.checkpoint_every == 0 or self.step == self.config.steps):
                self.save_checkpoint(path, losses=losses)
        return losses

    def objective_record(self) -> dict[str, Any]:
        """HFLD's options (None without HFLD) and the other preservation terms' weights (None
        without any), as stored in checkpoints and editor records."""
        preservation = self.preservation
        hfld = preservation.hfld if preservation is not None and preservation.hfld.weight > 0 else None
        terms = preservation.describe()["terms"] if preservation is not None else {}
        return {"hfld": None if hfld is None else hfld.describe(), "preservation": terms or None}

    def record(self) -> dict[str, Any]:
        """What produced the editor, for `save_editor(extra=...)` and manifests."""
        return {
            "step": self.step,
            "training": self.config.as_dict(),
            **self.objective_record(),
            "layers": None if self.editor.layers is None else list(self.editor.layers),
            "classifier_attributes": list(self.classifier.attributes),
            "inputs": self.inputs_digest,
        }

    def save_checkpoint(self, path: str | os.PathLike, *, losses: dict[str, float] | None = None) -> Path:
        """Editor, optimizer, step and configuration in one file, written atomically."""
        state = {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "step": self.step,
            "config": self.config.as_dict(),
            "editor_config": self.editor.config,
            **self.objective_record(),
            "inputs": self.inputs_digest,
            "editor": self.editor.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "losses": losses or {},
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        path = Path(path)
        write_atomic(buffer.getvalue(), path)
        return path

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore editor, optimizer and step; refuse a checkpoint of a different run."""
        path = Path(path)
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as error:
            raise CheckpointError(f"{path}: cannot read the training checkpoint ({error})") from error
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path}: not an exprlock editor training checkpoint")
        if state["format_version"] > CHECKPOINT_VERSION:
            raise CheckpointError(
                f"{path}: checkpoint version {state['format_version']} is newer than "
                f"{CHECKPOINT_VERSION}; upgrade exprlock"
            )
        stored, current = state["config"], self.config.as_dict()
        changed = sorted(
            k for k in current.keys() | stored.keys() if k not in RESUMABLE_CHANGES and stored.get(k) != current.get(k)
        )
        if changed:
            raise CheckpointError(
                f"{path}: checkpoint of a different run (fields {', '.join(changed)} differ); "
                "use the original configuration or a new checkpoint path"
            )
        objective = self.objective_record()
        stored_objective = {key: state.get(key) for key in objective}
        if state["editor_config"] != self.editor.config or stored_objective != objective:
            raise CheckpointError(
                f"{path}: checkpoint editor {state['editor_config']} / HFLD and preservation terms {stored_objective} differ from "
                f"this run's {self.editor.config} / {objective}"
            )
        if state["inputs"] != self.inputs_digest:
            differing = sorted(k for k in self.inputs_digest if state["inputs"].get(k) != self.inputs_digest[k])
            raise CheckpointError(
                f"{path}: checkpoint was trained on other {' and '.join(differing)} (SHA-256 differs); "
                "resume with the same training latents and classifier or use a new checkpoint path"
            )
        if state["step"] > self.config.steps:
            raise CheckpointError(
                f"{path}: checkpoint is at step {state['step']}, beyond the configured {self.config.steps} steps"
            )
        self.editor.load_state_dict(state["editor"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
