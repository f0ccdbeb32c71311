"""Linear edit directions in a generator's latent space (InterFaceGAN).

Shen et al., "Interpreting the Latent Space of GANs for Semantic Face Editing" (CVPR 2020) and
"InterFaceGAN" (TPAMI 2020): an attribute that a linear classifier can separate in latent space
is edited by moving along the unit normal `n` of the separating hyperplane, `w' = w + a n`.
Two attributes are decoupled by *conditional manipulation*: the primal normal is projected onto
the orthogonal complement of the normals to hold fixed. The reference implementation
(genforce/interfacegan, MIT) fits a linear SVM with scikit-learn; here the classifier is an
L2-regularised logistic regression fitted with L-BFGS in float64 torch, which gives the same
hyperplane on confidently labelled samples without the extra dependency.

Layouts. A direction's `vector` is unit-norm in one of two layouts:

- `"flat"`: shape `latent_shape` (a z vector, or all W+ layers flattened together); fitted on
  the flattened latents and unit over all elements.
- `"shared"`: shape `(w_dim,)` for latents `(num_ws, w_dim)`; one W direction applied equally
  to every layer, InterFaceGAN's W-space edit. It is fitted on the mean over layers, which is
  the W code itself when the W+ latents were drawn by broadcasting one w to every layer.

Files: our own `.safetensors` (the vector plus JSON metadata) and InterFaceGAN's `.npy`
boundaries of shape `(1, D)`, with D either `num_ws * w_dim` (flattened W+) or `w_dim` (shared).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import safetensors.torch
import torch

from pipeline.editing.storage import read_checked
from pipeline.errors import CheckpointError, ConfigError, ImageError
from pipeline.images import write_atomic

Layout = Literal["flat", "shared"]

FORMAT = "exprlock-direction"
FORMAT_VERSION = 1
DEFAULT_FRACTION = 0.1
UNIT_TOLERANCE = 1e-4


@dataclass(frozen=True, eq=False)
class Direction:
    """A unit edit direction with the evidence behind it.

    Attributes:
        name: the attribute, e.g. "age"; positive strengths move towards higher scores.
        vector: float32 CPU tensor, unit norm, shaped `latent_shape` ("flat") or
            `latent_shape[-1:]` ("shared", one W direction for every layer).
        latent_shape: the per-sample latent shape of the generator it edits.
        intercept: offset of the fitted hyperplane, `vector . w + intercept > 0` on the positive
            side (flattened or layer-mean w, as the layout says); 0 when unknown.
        accuracy: hold-out accuracy of the classifier the vector came from; None when unknown
            (a foreign boundary). A conditioned direction keeps its primal's accuracy.
        num_samples: confidently labelled samples used for fitting and hold-out; None when unknown.
        provenance: JSON-serialisable record of how the vector was made.
    """

    name: str
    vector: torch.Tensor
    latent_shape: tuple[int, ...]
    intercept: float = 0.0
    accuracy: float | None = None
    num_samples: int | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        latent_shape = tuple(int(s) for s in self.latent_shape)
        object.__setattr__(self, "latent_shape", latent_shape)
        vector = self.vector.detach().to("cpu", torch.float32)
        object.__setattr__(self, "vector", vector)
        allowed = [latent_shape] + ([latent_shape[-1:]] if len(latent_shape) == 2 else [])
        if tuple(vector.shape) not in allowed:
            raise ConfigError(
                f"direction {self.name!r}: vector shape {tuple(vector.shape)} does not fit latent "
                f"shape {latent_shape}; expected one of {allowed}"
            )
        norm = float(vector.double().norm())
        if not math.isfinite(norm) or abs(norm - 1.0) > UNIT_TOLERANCE:
            raise ConfigError(f"direction {self.name!r}: vector must be finite with unit norm, got norm {norm}")

    @property
    def layout(self) -> Layout:
        return "flat" if tuple(self.vector.shape) == self.latent_shape else "shared"

    def displacement(self) -> torch.Tensor:
        """The latent displacement of strength 1, shaped `latent_shape` (shared rows repeated)."""
        return self.vector.expand(self.latent_shape)

    def edit(self, latents: torch.Tensor, strength: float | torch.Tensor) -> torch.Tensor:
        """The linear edit `w + a n`, with one strength for all or one per sample."""
        check_latents(latents, self.latent_shape, what=f"latents for direction {self.name!r}")
        vector = self.vector.to(latents.device, latents.dtype)
        return latents + broadcast_strength(strength, latents) * vector

    def require_latent_shape(self, latent_shape: Sequence[int]) -> None:
        """Refuse to edit a generator whose latent shape is not the one this was fitted for."""
        if tuple(latent_shape) != self.latent_shape:
            raise CheckpointError(
                f"direction {self.name!r}: made for latent shape {self.latent_shape}, the "
                f"generator has {tuple(latent_shape)}; fit or load a direction for this generator"
            )


def check_latents(latents: torch.Tensor, latent_shape: Sequence[int], *, what: str = "latents") -> None:
    """Refuse latents whose per-sample shape is not `latent_shape`."""
    if latents.ndim != len(latent_shape) + 1 or tuple(latents.shape[1:]) != tuple(latent_shape):
        raise ImageError(f"{what}: expected shape (N, {', '.join(map(str, latent_shape))}), got {tuple(latents.shape)}")


def broadcast_strength(strength: float | torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """Strengths as `(N, 1, ..., 1)` for latents `(N, ...)`: a scalar or one value per sample."""
    strength = torch.as_tensor(strength, dtype=latents.dtype, device=latents.device)
    if strength.ndim == 0:
        strength = strength.expand(len(latents))
    if strength.shape != (len(latents),):
        raise ConfigError(f"strength: expected a scalar or shape ({len(latents)},), got {tuple(strength.shape)}")
    return strength.reshape(-1, *([1] * (latents.ndim - 1)))


# ---------------------------------------------------------------------------------------------
# Fitting
# ---------------------------------------------------------------------------------------------
def select_confident(
    scores: torch.Tensor,
    *,
    fraction: float | None = None,
    thresholds: tuple[float, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices and binary labels of the confidently scored samples.

    Either the `fraction` highest and lowest scores (InterFaceGAN's `chosen_ratio`, default 0.1),
    or `thresholds=(low, high)`: scores `<= low` are negative, `>= high` positive (for
    probabilities, e.g. (0.2, 0.8)). NaN scores are never selected.
    """
    scores = torch.as_tensor(scores).detach().flatten().cpu()
    if not scores.is_floating_point():
        scores = scores.double()
    valid = torch.nonzero(~torch.isnan(scores)).flatten()
    if thresholds is not None:
        if fraction is not None:
            raise ConfigError("select_confident: give fraction or thresholds, not both")
        low, high = thresholds
        if not low <= high:
            raise ConfigError(f"thresholds: expected low <= high, got {thresholds}")
        negative = valid[scores[valid] <= low]
        positive = valid[scores[valid] >= high]
        if low == high:
            negative = valid[scores[valid] < low]
    else:
        fraction = DEFAULT_FRACTION if fraction is None else fraction
        if not 0 < fraction <= 0.5:
            raise ConfigError(f"fraction: expected a value in (0, 0.5], got {fraction}")
        count = int(len(valid) * fraction)
        order = valid[torch.argsort(scores[valid], stable=True)]
        negative, positive = order[:count], order[len(order) - count :]
    indices = torch.cat([negative, positive])
    labels = torch.cat([torch.zeros(len(negative)), torch.ones(len(positive))])
    return indices, labels


def fit_direction(
    latents: torch.Tensor,
    scores: torch.Tensor,
    *,
    name: str,
    layout: Layout = "flat",
    fraction: float | None = None,
    thresholds: tuple[float, float] | None = None,
    holdout_fraction: float = 0.3,
    l2: float = 1e-3,
    seed: int = 0,
    provenance: dict[str, Any] | None = None,
) -> Direction:
    """Fit the unit normal of a linear classifier separating high from low attribute scores.

    Args:
        latents: `(N, *latent_shape)` samples of the generator's editable latent.
        scores: `(N,)` attribute scores (probabilities, regressed values or 0/1 labels); higher
            means more of the attribute, so positive strengths add it. NaN marks unscored samples.
        name: the attribute name stored with the direction.
        layout: "flat" fits on the flattened latent; "shared" (latents `(N, num_ws, w_dim)` only)
            fits one W direction on the layer mean (see the module docstring).
        fraction, thresholds: which samples count as confident, see `select_confident`.
        holdout_fraction: share of each class kept out of fitting to measure accuracy.
        l2: L2 penalty on the weights (not the intercept) of the mean logistic loss.
        seed: seeds the stratified train/hold-out split; the fit itself is deterministic.
        provenance: extra JSON-serialisable facts to record (scorer, generator, seeds).
    """
    latents = torch.as_tensor(latents).detach().cpu()
    latent_shape = tuple(latents.shape[1:])
    features = _features(latents, layout)
    scores = torch.as_tensor(scores).detach().flatten().cpu()
    if len(scores) != len(latents):
        raise ConfigError(f"scores: expected {len(latents)} values (one per latent), got {len(scores)}")
    indices, labels = select_confident(scores, fraction=fraction, thresholds=thresholds)
    train, holdout = _stratified_split(labels, holdout_fraction, seed)
    x, y = features[indices].double(), labels.double()
    weight, bias = _logistic_regression(x[train], y[train], l2)
    norm = float(weight.norm())
    if norm == 0.0 or not math.isfinite(norm):
        raise ConfigError(f"direction {name!r}: the classifier found no separating direction (weight norm {norm})")
    unit, intercept = weight / norm, bias / norm
    holdout_accuracy = _accuracy(x[holdout], y[holdout], unit, intercept)
    record = {
        "method": "logistic-regression-l2",
        "layout": layout,
        "l2": l2,
        "selection": {"thresholds": list(thresholds)}
        if thresholds is not None
        else {"fraction": fraction or DEFAULT_FRACTION},
        "holdout_fraction": holdout_fraction,
        "seed": seed,
        "num_train": len(train),
        "num_holdout": len(holdout),
        "train_accuracy": _accuracy(x[train], y[train], unit, intercept),
        "num_latents": len(latents),
        **(provenance or {}),
    }
    shape = latent_shape if layout == "flat" else latent_shape[-1:]
    return Direction(
        name=name,
        vector=unit.float().reshape(shape),
        latent_shape=latent_shape,
        intercept=float(intercept),
        accuracy=holdout_accuracy,
        num_samples=len(indices),
        provenance=record,
    )


def _features(latents: torch.Tensor, layout: Layout) -> torch.Tensor:
    if layout == "flat":
        return latents.reshape(len(latents), -1)
    if layout == "shared":
        if latents.ndim != 3:
            raise ConfigError(f"layout 'shared' needs latents (N, num_ws, w_dim), got {tuple(latents.shape)}")
        return latents.mean(dim=1)
    raise ConfigError(f"layout: expected 'flat' or 'shared', got {layout!r}")


def _stratified_split(labels: torch.Tensor, holdout_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and hold-out positions, the same share of each class in both."""
    if not 0 < holdout_fraction < 1:
        raise ConfigError(f"holdout_fraction: expected a value in (0, 1), got {holdout_fraction}")
    generator = torch.Generator().manual_seed(seed)
    train, holdout = [], []
    for value in (0.0, 1.0):
        members = torch.nonzero(labels == value).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        held = max(1, round(len(members) * holdout_fraction))
        if len(members) - held < 2:
            raise ConfigError(
                f"confident samples: class {int(value)} has {len(members)}, need at least {held + 2} "
                "for fitting and hold-out; score more latents or widen fraction/thresholds"
            )
        holdout.append(members[:held])
        train.append(members[held:])
    return torch.cat(train), torch.cat(holdout)


def _logistic_regression(x: torch.Tensor, y: torch.Tensor, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and intercept minimising mean logistic loss + l2/2 |w|^2 (float64, L-BFGS)."""
    if l2 <= 0:
        raise ConfigError(f"l2: expected a positive penalty (separable data has no finite optimum), got {l2}")
    mean = x.mean(dim=0)
    centred = x - mean
    weight = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1, max_iter=500, tolerance_grad=1e-10, tolerance_change=1e-14, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = centred @ weight + bias
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y) + 0.5 * l2 * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    weight, bias = weight.detach(), bias.detach()
    return weight, bias - weight @ mean


def _accuracy(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> float:
    return float(((x @ weight + bias > 0).double() == y).double().mean())


# ---------------------------------------------------------------------------------------------
# Conditional manipulation
# ---------------------------------------------------------------------------------------------
def project_orthogonal(direction: Direction, others: Sequence[Direction], *, name: str | None = None) -> Direction:
    """The direction with its components along `others` removed, renormalised.

    InterFaceGAN's conditional manipulation, generalised to any number of conditions by
    Gram-Schmidt on `others` first (so correlated conditions are removed once). Vectors are
    compared as latent displacements, so a shared direction and a flat one can be mixed; the
    result is shared only when every input is. Refuses a direction that lies in the span of
    the others, since nothing of it would be left to edit with.
    """
    for other in others:
        if other.latent_shape != direction.latent_shape:
            raise ConfigError(
                f"project_orthogonal: {other.name!r} is for latent shape {other.latent_shape}, "
                f"{direction.name!r} for {direction.latent_shape}"
            )
    shared = direction.layout == "shared" and all(o.layout == "shared" for o in others)
    as_vector = (lambda d: d.vector.double().flatten()) if shared else (lambda d: d.displacement().double().flatten())
    basis: list[torch.Tensor] = []
    for other in others:
        residual = _remove(as_vector(other), basis)
        if residual.norm() > 1e-8:
            basis.append(residual / residual.norm())
    primal = as_vector(direction)
    residual = _remove(primal, basis)
    if residual.norm() < 1e-6 * primal.norm():
        raise ConfigError(f"project_orthogonal: {direction.name!r} lies in the span of {[o.name for o in others]}")
    unit = residual / residual.norm()
    names = [o.name for o in others]
    return Direction(
        name=name or f"{direction.name}-orth-{'-'.join(names)}",
        vector=unit.float().reshape(direction.vector.shape if shared else direction.latent_shape),
        latent_shape=direction.latent_shape,
        intercept=direction.intercept,
        accuracy=direction.accuracy,
        num_samples=direction.num_samples,
        provenance={
            "method": "conditional-projection",
            "primal": direction.name,
            "conditioned_on": names,
            "cosine_to_primal": float(unit @ (primal / primal.norm())),
            "primal_provenance": direction.provenance,
        },
    )


def _remove(vector: torch.Tensor, basis: Sequence[torch.Tensor]) -> torch.Tensor:
    for unit in basis:
        vector = vector - (vector @ unit) * unit
    return vector


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------
def save_direction(direction: Direction, path: str | os.PathLike) -> Path:
    """Write `.safetensors` (vector and metadata) or an InterFaceGAN `.npy` (vector only).

    The file is written under a temporary name and renamed into place, so a crash never leaves
    a truncated file. InterFaceGAN files hold the vector as float32 `(1, D)`; everything else
    (name, accuracy, provenance) is lost in that format.
    """
    path = Path(path)
    if _suffix(path) == ".npy":
        buffer = io.BytesIO()
        np.save(buffer, direction.vector.numpy().reshape(1, -1).astype(np.float32))
        data = buffer.getvalue()
    else:
        metadata = {
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
            "name": direction.name,
            "latent_shape": json.dumps(list(direction.latent_shape)),
            "intercept": json.dumps(direction.intercept),
            "accuracy": json.dumps(direction.accuracy),
            "num_samples": json.dumps(direction.num_samples),
            "provenance": json.dumps(direction.provenance, sort_keys=True),
        }
        data = safetensors.torch.save({"vector": direction.vector.contiguous()}, metadata=metadata)
    write_atomic(data, path)
    return path


def load_direction(
    path: str | os.PathLike, *, latent_shape: Sequence[int] | None = None, name: str | None = None
) -> Direction:
    """Read a direction file, checked against the generator's `latent_shape`.

    `.safetensors` files carry their own latent shape; `latent_shape` is then only checked.
    InterFaceGAN `.npy` boundaries `(1, D)` need it to be interpreted: D equal to the number of
    latent elements gives a flat direction, D equal to `w_dim` of a `(num_ws, w_dim)` latent a
    shared one. `name` defaults to the stored name, or the file stem for `.npy`.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: direction file not found")
    if _suffix(path) == ".npy":
        if latent_shape is None:
            raise ConfigError(f"{path}: an InterFaceGAN boundary needs the generator's latent_shape to be read")
        return _load_interfacegan(path, tuple(latent_shape), name or path.stem)
    direction = _load_safetensors(path, name)
    if latent_shape is not None:
        direction.require_latent_shape(latent_shape)
    return direction


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".safetensors"):
        raise ConfigError(f"{path}: direction files must end in .safetensors (exprlock) or .npy (InterFaceGAN)")
    return suffix


def _load_safetensors(path: Path, name: str | None) -> Direction:
    metadata, tensors = read_checked(path, format=FORMAT, version=FORMAT_VERSION, what="direction")
    if set(tensors) != {"vector"}:
        raise CheckpointError(f"{path}: a direction file holds one tensor 'vector', found {sorted(tensors)}")
    vector = tensors["vector"]
    return Direction(
        name=name or metadata["name"],
        vector=vector,
        latent_shape=tuple(json.loads(metadata["latent_shape"])),
        intercept=json.loads(metadata["intercept"]),
        accuracy=json.loads(metadata["accuracy"]),
        num_samples=json.loads(metadata["num_samples"]),
        provenance=json.loads(metadata["provenance"]),
    )


def _load_interfacegan(path: Path, latent_shape: tuple[int, ...], name: str) -> Direction:
    try:
        boundary = np.load(path, allow_pickle=False)
    except Exception as error:
        raise CheckpointError(f"{path}: cannot read the InterFaceGAN boundary ({error})") from error
    if boundary.ndim != 2 or boundary.shape[0] != 1 or boundary.dtype.kind != "f":
        raise CheckpointError(
            f"{path}: expected a float InterFaceGAN boundary of shape (1, D), got {boundary.dtype} {boundary.shape}"
        )
    size, elements = boundary.shape[1], math.prod(latent_shape)
    if size == elements:
        shape = latent_shape
    elif len(latent_shape) == 2 and size == latent_shape[1]:
        shape = latent_shape[1:]
    else:
        expected = f"{elements}" + (
            f" (W+ flattened) or {latent_shape[1]} (one W direction)" if len(latent_shape) == 2 else ""
        )
        raise CheckpointError(
            f"{path}: boundary has {size} values, the generator's latent shape {latent_shape} needs "
            f"{expected}; use a boundary made for this generator"
        )
    vector = torch.from_numpy(boundary.astype(np.float64)).flatten()
    norm = float(vector.norm())
    if norm == 0.0 or not math.isfinite(norm):
        raise CheckpointError(f"{path}: boundary must be finite and non-zero, got norm {norm}")
    return Direction(
        name=name,
        vector=(vector / norm).float().reshape(shape),
        latent_shape=latent_shape,
        provenance={
            "method": "interfacegan-boundary",
            "file": str(path),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "stored_norm": norm,
        },
    )
