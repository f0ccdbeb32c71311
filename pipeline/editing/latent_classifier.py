"""An MLP that predicts attribute logits from latents, the critic the latent editor trains against.

Yao et al., "A Latent Transformer for Disentangled Face Editing in Images and Videos" (ICCV
2021; InterDigitalInc/latent-transformer) train their editor against `LCNet`, fully connected
layers with LeakyReLU(0.2) on flattened W+ codes predicting the 40 CelebA attributes. Here the
labels come from exprlock's own scorers run on generated samples, so any attribute a scorer
measures can be edited. Inputs are standardised with statistics of the training latents (kept
as buffers), labels may be soft (probabilities in [0, 1]) and NaN marks a missing label.

The classifier also stores the Pearson correlation between its training labels: the editor's
"keep other attributes" loss weights attribute k by `1 - |corr(target, k)|`, as the Latent
Transformer does with CelebA's label correlations.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from pipeline.editing.directions import check_latents
from pipeline.editing.storage import read_checked
from pipeline.errors import CheckpointError, ConfigError
from pipeline.images import write_atomic

FORMAT = "exprlock-latent-classifier"
FORMAT_VERSION = 1


class LatentClassifier(nn.Module):
    """Latents `(N, *latent_shape)` to attribute logits `(N, K)`.

    Args:
        latent_shape: the generator's per-sample latent shape; latents are flattened.
        attributes: names of the K outputs, in order.
        hidden: widths of the hidden layers; () gives a linear classifier.
        negative_slope: slope of the LeakyReLU between layers.
    """

    def __init__(
        self,
        latent_shape: Sequence[int],
        attributes: Sequence[str],
        *,
        hidden: Sequence[int] = (512, 256),
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        if not attributes or len(set(attributes)) != len(attributes):
            raise ConfigError(f"attributes: expected distinct names, got {list(attributes)}")
        self.latent_shape = tuple(int(s) for s in latent_shape)
        self.attributes = tuple(attributes)
        self.hidden = tuple(int(h) for h in hidden)
        self.negative_slope = float(negative_slope)
        widths = [math.prod(self.latent_shape), *self.hidden, len(self.attributes)]
        layers: list[nn.Module] = []
        for index, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            layers.append(nn.Linear(fan_in, fan_out))
            if index < len(widths) - 2:
                layers.append(nn.LeakyReLU(self.negative_slope))
        self.net = nn.Sequential(*layers)
        self.register_buffer("input_mean", torch.zeros(widths[0]))
        self.register_buffer("input_std", torch.ones(widths[0]))
        self.register_buffer("label_correlation", torch.eye(len(self.attributes)))

    @property
    def config(self) -> dict[str, Any]:
        return {
            "latent_shape": list(self.latent_shape),
            "attributes": list(self.attributes),
            "hidden": list(self.hidden),
            "negative_slope": self.negative_slope,
        }

    def index(self, attribute: str) -> int:
        """Output position of an attribute; refuses unknown names, listing the known ones."""
        if attribute not in self.attributes:
            raise ConfigError(f"attribute {attribute!r}: the latent classifier predicts {list(self.attributes)}")
        return self.attributes.index(attribute)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        check_latents(latents, self.latent_shape)
        flat = latents.reshape(len(latents), -1)
        return self.net((flat - self.input_mean) / self.input_std)


@dataclass(frozen=True)
class ClassifierReport:
    """How well a fitted latent classifier predicts its labels on samples it never saw."""

    holdout_accuracy: dict[str, float]
    holdout_loss: float
    train_loss: float
    num_train: int
    num_holdout: int
    epochs: int


def label_correlation(labels: torch.Tensor) -> torch.Tensor:
    """Pearson correlation `(K, K)` of label columns over rows where both are present.

    Constant or unobserved pairs get 0 (no evidence of correlation); the diagonal is 1.
    """
    labels = torch.as_tensor(labels).double()
    count = labels.shape[1]
    result = torch.eye(count, dtype=torch.float64)
    for i in range(count):
        for j in range(i + 1, count):
            both = ~(labels[:, i].isnan() | labels[:, j].isnan())
            a, b = labels[both, i], labels[both, j]
            a, b = a - a.mean(), b - b.mean()
            denominator = (a.square().sum() * b.square().sum()).sqrt()
            value = float((a * b).sum() / denominator) if both.sum() > 1 and denominator > 0 else 0.0
            result[i, j] = result[j, i] = value
    return result.float()


def fit_latent_classifier(
    latents: torch.Tensor,
    labels: torch.Tensor,
    *,
    attributes: Sequence[str],
    hidden: Sequence[int] = (512, 256),
    epochs: int = 30,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    holdout_fraction: float = 0.1,
    seed: int = 0,
    callback: Callable[[int, float], None] | None = None,
) -> tuple[LatentClassifier, ClassifierReport]:
    """Train a classifier on scored latents with masked binary cross-entropy (Adam).

    Args:
        latents: `(N, *latent_shape)`.
        labels: `(N, K)` in [0, 1], column k for `attributes[k]`; soft labels are used as
            soft targets, NaN entries are ignored.
        holdout_fraction: share of the samples kept out for the report.
        seed: fixes initialisation, split and batch order; the result is then deterministic.
        callback: called after each epoch with (epoch, mean training loss), for progress.
    """
    latents = torch.as_tensor(latents).detach().float().cpu()
    labels = torch.as_tensor(labels).detach().float().cpu()
    if labels.shape != (len(latents), len(attributes)):
        raise ConfigError(f"labels: expected shape ({len(latents)}, {len(attributes)}), got {tuple(labels.shape)}")
    observed = labels[~labels.isnan()]
    if observed.numel() and (observed.min() < 0 or observed.max() > 1):
        raise ConfigError(f"labels: expected values in [0, 1] or NaN, got range [{observed.min()}, {observed.max()}]")
    if not 0 < holdout_fraction < 1 or len(latents) < 2:
        raise ConfigError(
            f"holdout_fraction: expected (0, 1) with at least 2 samples, got {holdout_fraction} with {len(latents)}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LatentClassifier(latents.shape[1:], attributes, hidden=hidden)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(latents), generator=generator)
    held = max(1, round(len(latents) * holdout_fraction))
    holdout, train = order[:held], order[held:]
    flat = latents.reshape(len(latents), -1)
    model.input_mean.copy_(flat[train].mean(dim=0))
    model.input_std.copy_(flat[train].std(dim=0).clamp_min(1e-6) if len(train) > 1 else torch.ones(flat.shape[1]))
    model.label_correlation.copy_(label_correlation(labels[train]))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    train_loss = math.nan
    for epoch in range(epochs):
        permutation = train[torch.randperm(len(train), generator=generator)]
        total = 0.0
        for start in range(0, len(permutation), batch_size):
            batch = permutation[start : start + batch_size]
            loss = _masked_bce(model(latents[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        train_loss = total / len(train)
        if callback is not None:
            callback(epoch, train_loss)
    model.eval()
    with torch.no_grad():
        logits = model(latents[holdout])
        holdout_loss = float(_masked_bce(logits, labels[holdout]))
    accuracy = {}
    for k, name in enumerate(attributes):
        present = ~labels[holdout, k].isnan()
        hits = (logits[present, k] > 0) == (labels[holdout][present, k] > 0.5)
        accuracy[name] = float(hits.float().mean()) if present.any() else math.nan
    report = ClassifierReport(accuracy, holdout_loss, train_loss, len(train), len(holdout), epochs)
    return model, report


def _masked_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    present = ~labels.isnan()
    losses = nn.functional.binary_cross_entropy_with_logits(logits, labels.nan_to_num(0.0), reduction="none")
    return (losses * present).sum() / present.sum().clamp_min(1)


def save_latent_classifier(
    model: LatentClassifier, path: str | os.PathLike, *, report: ClassifierReport | None = None
) -> Path:
    """Write weights and configuration as `.safetensors`, atomically (temporary name, rename)."""
    path = Path(path)
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": json.dumps(model.config),
        "report": json.dumps(asdict(report) if report is not None else None),
    }
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    write_atomic(safetensors.torch.save(state, metadata=metadata), path)
    return path


def load_latent_classifier(
    path: str | os.PathLike, *, latent_shape: Sequence[int] | None = None, device: str | torch.device = "cpu"
) -> LatentClassifier:
    """Read a classifier written by `save_latent_classifier`, in eval mode on `device`.

    `latent_shape`, when given, must match the stored one (the generator the labels came from).
    """
    path = Path(path)
    metadata, state = read_checked(path, format=FORMAT, version=FORMAT_VERSION, what="latent classifier")
    config = json.loads(metadata["config"])
    if latent_shape is not None and tuple(latent_shape) != tuple(config["latent_shape"]):
        raise CheckpointError(
            f"{path}: classifier made for latent shape {tuple(config['latent_shape'])}, the generator "
            f"has {tuple(latent_shape)}; train a classifier on this generator's latents"
        )
    model = LatentClassifier(
        config["latent_shape"], config["attributes"], hidden=config["hidden"], negative_slope=config["negative_slope"]
    )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not match the stored configuration ({error})") from error
    return model.to(device).eval()
