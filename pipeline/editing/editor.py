"""The latent editor of the Latent Transformer: `w' = w + a * (A w + b)`, one per attribute.

Yao, Newson, Gousseau, Hellier, "A Latent Transformer for Disentangled Face Editing in Images
and Videos" (ICCV 2021; reference code InterDigitalInc/latent-transformer, `nets.F_mapping`):
a linear map per W+ layer whose output, scaled by the edit strength `a`, is added to the
latent. Unlike a fixed direction, the displacement `A w + b` depends on the face being edited,
which lets training trade attribute change against keeping everything else.

Layouts (`mode`):

- `"per_layer"`: latents `(num_ws, w_dim)`, a separate `A_l (w_dim, w_dim)` and `b_l` per layer
  (the reference code's 18 dense layers);
- `"shared"`: latents `(num_ws, w_dim)`, one `A`, `b` applied to every layer;
- `"whole"`: one `A`, `b` on the flattened latent (the only mode for latents that are not
  `(num_ws, w_dim)`, e.g. the demo DCGAN's z in R^100).

An editor may be restricted to some W+ layers (`layers`, e.g. the coarse layers 0-3 for a head
shape, the fine ones for hair colour): its displacement is zero on every other layer, in training
and in use, so the edit cannot reach the styles those layers control.

As in the reference code, `A` has an equalised learning rate: the stored weight is multiplied by
`1 / sqrt(fan_in)` at run time, so Adam moves `A` more slowly than `b`. `from_direction`
initialises `A = 0, b = n`, which reproduces the linear edit `w + a n` exactly; training then
starts from the InterFaceGAN solution instead of from a random map.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import safetensors.torch
import torch
from torch import nn

from pipeline.editing.directions import Direction, broadcast_strength, check_latents
from pipeline.editing.storage import read_checked
from pipeline.errors import CheckpointError, ConfigError
from pipeline.images import write_atomic

Mode = Literal["per_layer", "shared", "whole"]
Init = Literal["zero", "random"]

FORMAT = "exprlock-latent-editor"
FORMAT_VERSION = 1


class LatentEditor(nn.Module):
    """Edits latents `(N, *latent_shape)` of one attribute with per-sample strengths.

    Args:
        latent_shape: the generator's per-sample latent shape.
        attribute: the attribute this editor adds (positive strengths) or removes (negative).
        mode: see the module docstring; None picks "per_layer" for `(num_ws, w_dim)` latents
            and "whole" otherwise.
        init: "random" is the reference code's initialisation (Xavier-uniform `A`, `b = 0`),
            drawn from `seed`; "zero" gives `A = 0, b = 0`, the identity edit.
        seed: random state for "random" initialisation; the global RNG is left untouched.
        layers: the W+ layers the edit may move (latents `(num_ws, w_dim)` only); None: all.
    """

    def __init__(
        self,
        latent_shape: Sequence[int],
        *,
        attribute: str,
        mode: Mode | None = None,
        init: Init = "random",
        seed: int = 0,
        layers: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.latent_shape = tuple(int(s) for s in latent_shape)
        self.attribute = attribute
        self.mode: Mode = mode or ("per_layer" if len(self.latent_shape) == 2 else "whole")
        if self.mode not in ("per_layer", "shared", "whole"):
            raise ConfigError(f"editor mode: expected 'per_layer', 'shared' or 'whole', got {self.mode!r}")
        if self.mode != "whole" and len(self.latent_shape) != 2:
            raise ConfigError(
                f"editor mode {self.mode!r} needs latents (num_ws, w_dim), got latent shape "
                f"{self.latent_shape}; use 'whole'"
            )
        self.layers = None if layers is None else tuple(sorted({int(i) for i in layers}))
        self.register_buffer("layer_mask", layer_mask(self.latent_shape, self.layers), persistent=False)
        groups, width = self._layout()
        self.weight = nn.Parameter(torch.zeros(groups, width, width))
        self.bias = nn.Parameter(torch.zeros(groups, width))
        self.gain = 1.0 / math.sqrt(width)
        if init == "random":
            generator = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for matrix in self.weight:
                    nn.init.xavier_uniform_(matrix, generator=generator)
        elif init != "zero":
            raise ConfigError(f"editor init: expected 'random' or 'zero', got {init!r}")

    def _layout(self) -> tuple[int, int]:
        """(number of independent maps, width each acts on)."""
        if self.mode == "whole":
            return 1, math.prod(self.latent_shape)
        num_ws, w_dim = self.latent_shape
        return (num_ws if self.mode == "per_layer" else 1), w_dim

    @property
    def config(self) -> dict[str, Any]:
        """Constructor settings; `layers` only when the editor is restricted (older files lack it)."""
        config = {"latent_shape": list(self.latent_shape), "attribute": self.attribute, "mode": self.mode}
        return config if self.layers is None else {**config, "layers": list(self.layers)}

    @classmethod
    def from_direction(
        cls, direction: Direction, *, mode: Mode | None = None, layers: Sequence[int] | None = None
    ) -> LatentEditor:
        """An editor with `A = 0, b = n` that reproduces `direction.edit` exactly (with `layers`:
        on those layers, leaving the others as they are)."""
        editor = cls(direction.latent_shape, attribute=direction.name, mode=mode, init="zero", layers=layers)
        vector = direction.vector
        if editor.mode == "whole":
            bias = direction.displacement().reshape(1, -1)
        elif direction.layout == "shared":
            bias = vector.expand_as(editor.bias)
        elif editor.mode == "per_layer":
            bias = vector
        elif bool((vector == vector[:1]).all()):
            bias = vector[:1]
        else:
            raise ConfigError(
                f"direction {direction.name!r} differs between W+ layers, a 'shared' editor cannot "
                "reproduce it; use mode 'per_layer'"
            )
        with torch.no_grad():
            editor.bias.copy_(bias)
        return editor

    def displacement(self, latents: torch.Tensor) -> torch.Tensor:
        """`A w + b` for each latent, the edit of strength 1."""
        check_latents(latents, self.latent_shape, what=f"latents for the {self.attribute!r} editor")
        _, width = self._layout()
        rows = latents.reshape(len(latents), -1, width).unsqueeze(-1)
        delta = torch.matmul(self.weight * self.gain, rows).squeeze(-1) + self.bias
        delta = delta.reshape(latents.shape)
        return delta if self.layers is None else delta * self.layer_mask.to(delta.dtype)

    def forward(self, latents: torch.Tensor, strength: float | torch.Tensor) -> torch.Tensor:
        """`w + a (A w + b)`, one strength for the batch or one per sample."""
        return latents + broadcast_strength(strength, latents) * self.displacement(latents)


def layer_mask(latent_shape: Sequence[int], layers: Sequence[int] | None) -> torch.Tensor:
    """`(num_ws, 1)` ones on `layers` and zeros elsewhere (all ones without `layers`)."""
    if layers is None:
        return torch.ones(latent_shape[0] if len(latent_shape) == 2 else 1, 1)
    if len(latent_shape) != 2:
        raise ConfigError(
            f"edit layers {list(layers)}: only W+ latents (num_ws, w_dim) have layers, this generator's "
            f"latent shape is {tuple(latent_shape)}; remove edits.layers"
        )
    num_ws = latent_shape[0]
    outside = [i for i in layers if not 0 <= i < num_ws]
    if outside or not layers:
        raise ConfigError(f"edit layers {list(layers)}: expected indices in 0..{num_ws - 1}, at least one")
    mask = torch.zeros(num_ws, 1)
    mask[list(layers)] = 1.0
    return mask


def save_editor(editor: LatentEditor, path: str | os.PathLike, *, extra: dict[str, Any] | None = None) -> Path:
    """Write the editor's weights and configuration as `.safetensors`, atomically.

    `extra` is a JSON-serialisable record kept beside the configuration (training config,
    final losses, the direction it started from).
    """
    path = Path(path)
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": json.dumps(editor.config),
        "extra": json.dumps(extra or {}, sort_keys=True),
    }
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in editor.state_dict().items()}
    write_atomic(safetensors.torch.save(state, metadata=metadata), path)
    return path


def load_editor(
    path: str | os.PathLike, *, latent_shape: Sequence[int] | None = None, device: str | torch.device = "cpu"
) -> LatentEditor:
    """Read an editor written by `save_editor`; `latent_shape`, when given, must match."""
    path = Path(path)
    metadata, state = read_checked(path, format=FORMAT, version=FORMAT_VERSION, what="editor")
    config = json.loads(metadata["config"])
    if latent_shape is not None and tuple(latent_shape) != tuple(config["latent_shape"]):
        raise CheckpointError(
            f"{path}: editor made for latent shape {tuple(config['latent_shape'])}, the generator has "
            f"{tuple(latent_shape)}; train an editor for this generator"
        )
    editor = LatentEditor(
        config["latent_shape"], attribute=config["attribute"], mode=config["mode"], init="zero", layers=config.get("layers")
    )
    try:
        editor.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not match the stored configuration ({error})") from error
    return editor.to(device)


def read_editor_record(path: str | os.PathLike) -> dict[str, Any]:
    """The `extra` record `save_editor` stored beside the weights (what the editor was trained on)."""
    metadata, _ = read_checked(Path(path), format=FORMAT, version=FORMAT_VERSION, what="editor", tensors=False)
    return json.loads(metadata.get("extra", "{}"))
