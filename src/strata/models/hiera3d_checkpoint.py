"""Load published hBehaveMAE checkpoints into :class:`~strata.models.hiera3d.Hiera3DMAE`.

The reference repository (amathislab/BehaveMAE, ``main_pretrain.py`` ->
``util/misc.py:save_model``) writes ``checkpoint-<epoch>.pth`` as a pickled dict::

    {"model": state_dict, "optimizer": ..., "epoch": int, "scaler": ..., "args": argparse.Namespace}

It is read with ``torch.load(..., weights_only=True)``: PyTorch's restricted unpickler
accepts tensors and plain containers only. The one extra class it needs is
``argparse.Namespace`` (rebuilt by the unpickler's NEWOBJ + BUILD of a plain ``__dict__``),
allowed for this load only through ``torch.serialization.safe_globals``. A file holding
any other object (e.g. one whose ``__reduce__`` runs a shell command) is refused before
anything is executed.

Key mapping (reference ``models/hbehave_mae.py`` + ``models/general_hiera.py`` -> this
module; every shape is unchanged; shapes at the full pose config in brackets):

===========================================  ===========================================
reference key                                strata key
===========================================  ===========================================
``patch_embed.proj.{weight,bias}``           ``encoder.patch_embed.proj.*`` [96,1,2,1,3]
``pos_embed_spatial``                        ``encoder.pos_embed_spatial`` [1,24,96]
``pos_embed_temporal``                       ``encoder.pos_embed_temporal`` [1,200,96]
``blocks.{i}.norm1.*``                       ``encoder.blocks.{i}.norm1.*``
``blocks.{i}.attn.qkv.*``                    ``encoder.blocks.{i}.attn.qkv.*`` [3*dim_out, dim]
``blocks.{i}.attn.proj.*``                   ``encoder.blocks.{i}.attn.proj.*``
``blocks.{i}.norm2.*``                       ``encoder.blocks.{i}.norm2.*``
``blocks.{i}.mlp.fc1.*``, ``mlp.fc2.*``      ``encoder.blocks.{i}.mlp.fc1.*``, ``mlp.fc2.*``
``blocks.{i}.proj.*`` (stage-first blocks)   ``encoder.blocks.{i}.proj.*``
``projections.{s}.*``                        ``encoder.projections.{s}.*``
``encoder_norm.*``                           ``encoder.norm.*`` [256]
``decoder_embed.*``                          ``decoder.embed.*`` [128,256]
``mask_token``                               ``decoder.mask_token`` [1,1,128]
``decoder_pos_embed``                        ``decoder.pos_embed`` [1,50,128]
``decoder_blocks.{i}.*``                     ``decoder.blocks.{i}.*`` (same sub-keys)
``decoder_norm.*``                           ``decoder.norm.*``
``decoder_pred.*``                           ``decoder.pred.*`` [288,128]
``multi_scale_fusion_heads.{s}.*``           ``fusion_heads.{s}.*`` (``multi`` only; see below)
===========================================  ===========================================

The reference builds ``multi_scale_fusion_heads`` (Conv3d per pooled stage, kernel =
stride = the stage's mask unit) even with ``decoding_strategy=single``, where they never
enter the forward pass, so they are dropped then. With ``decoding_strategy=multi`` they
become this module's ``fusion_heads``: a Conv3d whose kernel covers the whole unit is a
linear map of the unit's flattened tokens, so its weight ``[O, D, t, h, w]`` is reshaped
to ``[O, D*t*h*w]``. Checkpoints with a single joint ``pos_embed`` (``sep_pos_embed``
off) or the non-hierarchical variant do not match this architecture and are refused.

Token order differs inside the network (the reference "unrolls" tokens so pooling is a
strided max; here tokens are grouped by mask unit), but no parameter depends on it:
position embeddings are added in raster order before either reordering, and the
decoder works on the final grid in raster order in both. The prediction layout per unit
is (t, h, w) for one channel, as in the reference.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from strata.models.hiera3d import Hiera3DConfig, Hiera3DMAE

# (reference pattern, strata replacement), applied to the first matching pattern.
KEY_MAP: tuple[tuple[str, str], ...] = (
    (r"^patch_embed\.", "encoder.patch_embed."),
    (r"^pos_embed_(spatial|temporal)$", r"encoder.pos_embed_\1"),
    (r"^blocks\.", "encoder.blocks."),
    (r"^projections\.", "encoder.projections."),
    (r"^encoder_norm\.", "encoder.norm."),
    (r"^decoder_embed\.", "decoder.embed."),
    (r"^mask_token$", "decoder.mask_token"),
    (r"^decoder_pos_embed$", "decoder.pos_embed"),
    (r"^decoder_blocks\.", "decoder.blocks."),
    (r"^decoder_norm\.", "decoder.norm."),
    (r"^decoder_pred\.", "decoder.pred."),
)
FUSION = re.compile(r"^multi_scale_fusion_heads\.(\d+)\.(weight|bias)$")


class CheckpointError(ValueError):
    """A reference checkpoint cannot be read or does not fit the architecture."""


def read_reference_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict, unpickled without executing code (tensors, plain containers,
    and ``argparse.Namespace`` only)."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # the restricted unpickler raises UnpicklingError (or others) on foreign objects
        raise CheckpointError(f"{path}: refused to load (not a plain weights file): {err}") from err
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise CheckpointError(f"{path}: expected a dict with a 'model' state dict")
    return checkpoint


def config_from_reference_args(args: argparse.Namespace) -> Hiera3DConfig:
    """The architecture that ``main_pretrain.py`` built from its arguments.

    The reference fixes what its CLI does not expose: one input channel, patch kernel =
    stride (``patch_kernel``), MLP ratio 4, widths and heads doubling per stage.
    """
    a = vars(args)
    if a.get("model", "hbehavemae") != "hbehavemae":
        raise CheckpointError(f"args.model is {a['model']!r}; only 'hbehavemae' checkpoints map onto Hiera3DMAE")
    if a.get("non_hierarchical", False):
        raise CheckpointError("non-hierarchical (BehaveMAE) checkpoints do not match this architecture")
    if not a.get("sep_pos_embed", True):
        raise CheckpointError("checkpoints without separate spatial/temporal position embeddings are not supported")
    try:
        return Hiera3DConfig(
            input_size=tuple(a["input_size"]), in_channels=1, patch_size=tuple(a["patch_kernel"]),
            embed_dim=a["init_embed_dim"], num_heads=a["init_num_heads"], stages=tuple(a["stages"]),
            q_strides=tuple(tuple(s) for s in a["q_strides"]), mask_unit_attn=tuple(a["mask_unit_attn"]),
            mlp_ratio=4.0, out_embed_dims=tuple(a["out_embed_dims"]), decoder_embed_dim=a["decoder_embed_dim"],
            decoder_depth=a["decoder_depth"], decoder_num_heads=a["decoder_num_heads"],
            mask_ratio=a["mask_ratio"], norm_pix_loss=a["norm_loss"],
            decoding_strategy=a.get("decoding_strategy", "multi"))  # the reference model's default
    except KeyError as err:
        raise CheckpointError(f"checkpoint args lack {err}; pass the architecture explicitly") from err


def convert_reference_state_dict(state_dict: dict[str, Tensor], fuse: bool = False) -> dict[str, Tensor]:
    """Rename reference keys to this module's keys (see the table above); unknown keys raise.
    ``fuse``: the model decodes multi-scale (keep the fusion heads as linear maps)."""
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        fusion = FUSION.match(key)
        if fusion:
            if fuse:
                stage, kind = fusion.groups()
                out[f"fusion_heads.{stage}.{kind}"] = value.reshape(value.shape[0], -1) if kind == "weight" else value
            continue
        for pattern, replacement in KEY_MAP:
            if re.match(pattern, key):
                out[re.sub(pattern, replacement, key)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"reference keys with no counterpart here: {', '.join(sorted(unknown))}")
    return out


def load_reference_checkpoint(path: str | Path, config: Hiera3DConfig | None = None) -> Hiera3DMAE:
    """A :class:`Hiera3DMAE` holding the weights of a reference ``checkpoint-*.pth``.

    ``config`` defaults to the architecture recorded in the checkpoint's ``args``. Every
    parameter of the model must be filled with a tensor of the same shape.
    """
    checkpoint = read_reference_checkpoint(path)
    args = checkpoint.get("args")
    if config is None:
        if not isinstance(args, argparse.Namespace):
            raise CheckpointError(f"{path}: no 'args' recorded; pass the architecture config")
        config = config_from_reference_args(args)
    weights = convert_reference_state_dict(checkpoint["model"], fuse=config.decoding_strategy == "multi")
    model = Hiera3DMAE(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    wrong = sorted(k for k in set(expected) & set(weights) if expected[k].shape != weights[k].shape)
    if missing or extra or wrong:
        details = [f"missing {missing}" if missing else "", f"unexpected {extra}" if extra else "",
                   "shape mismatch " + ", ".join(f"{k}: {tuple(weights[k].shape)} vs {tuple(expected[k].shape)}"
                                                 for k in wrong) if wrong else ""]
        raise CheckpointError(f"{path}: weights do not fit the architecture: " + "; ".join(d for d in details if d))
    model.load_state_dict(weights, strict=True)
    return model
