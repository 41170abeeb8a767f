"""Hierarchical ViT-3D masked autoencoder (hBehaveMAE / Hiera style), docs/design.md §4.1.

Method, in the order the code runs:

1. **Patch embedding** (:class:`~strata.models.blocks.PatchEmbed3D`). A Conv3d with kernel = stride cuts the
   input ``[B, C, T, H, W]`` into non-overlapping patches and embeds each as one token,
   giving a token grid ``(T/pt, H/ph, W/pw)``. Separate learned temporal and spatial
   position embeddings are added (hBehaveMAE's ``sep_pos_embed``).
2. **Mask units.** The token grid is cut into mask units of ``prod(q_strides)`` tokens per
   axis; every later operation keeps the tokens grouped by unit, ``x: [B, U, L, D]``
   (``U`` units, ``L`` tokens per unit in raster order inside the unit). Masking removes
   whole units (:meth:`Hiera3DMAE.random_masking`), so the encoder sees only the kept
   units and stays sparse through every stage.
3. **Stages** of :class:`HieraBlock`. Between stages the first block of the new stage
   doubles the width and the heads and max-pools the *queries* of its attention by that
   stage's q-stride (keys and values stay at full resolution); its residual is the
   max-pooled projection of the normalised input. That block still uses the previous
   stage's attention mode (Hiera lags the switch by one block), so with the default
   ``mask_unit_attn = (True, False, False)`` the first pooling block attends inside mask
   units and the rest of stages 1.. attend globally (:class:`MaskUnitAttention`).
4. **Per-stage output projections** give the multi-scale embeddings used for probing
   (:meth:`Hiera3D.forward_features`). What the decoder sees depends on
   ``decoding_strategy``: ``single`` takes the last stage's projection; ``multi``
   (hBehaveMAE's multi-scale fusion) adds every earlier stage's projection, mapped onto the
   final grid by a linear map of each mask unit's tokens (:meth:`Hiera3DMAE.fuse_stages`),
   so the reconstruction loss trains every level's projection, not only the last. The sum
   is layer-normalised.
5. **Decoder** (:class:`Hiera3DDecoder`): a light transformer on the final-stage grid (one
   token per mask unit) with a learned mask token for removed units; it predicts each
   unit's *time-strided* target (every ``patch_size[0]``-th frame of the unit's input).
6. **Loss** (:meth:`Hiera3DMAE.forward_loss`): MSE on masked units only, optionally with
   per-patch normalised targets.

Every reshape is an einops pattern so the shapes read off the code. Attention has a fused
``F.scaled_dot_product_attention`` path (training) and an explicit softmax path that
returns the probabilities (rollout, :meth:`Hiera3D.forward_attention`).

``python -m strata.models.hiera3d_shapes --config config/full.yaml --run pose`` prints the
token flow measured from a real forward pass of the configured model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import Tensor, nn

from strata.models.blocks import Block, Mlp, PatchEmbed3D
from strata.training.interface import StepOutput, TrainableModel

AXES = ("T (time)", "H (height)", "W (width)")
NORM_EPS = 1e-6  # LayerNorm eps of the reference (docs/design.md §4.1)
TARGET_EPS = 1e-6  # variance floor of per-patch normalised targets (as MAE)
# Parameter counts (millions) of the reference hBehaveMAE at the full pose config (docs/design.md §4.1).
REFERENCE_PARAMETERS_M = {"encoder": 8.63, "decoder": 0.28}

Shape3 = tuple[int, int, int]


def _prod3(shapes: tuple[Shape3, ...]) -> Shape3:
    """Per-axis product of 3-D strides (the identity for no strides)."""
    t, h, w = 1, 1, 1
    for st, sh, sw in shapes:
        t, h, w = t * st, h * sh, w * sw
    return t, h, w


def _div3(a: Shape3, b: Shape3) -> Shape3:
    return a[0] // b[0], a[1] // b[1], a[2] // b[2]


@dataclass(frozen=True)
class Hiera3DConfig:
    """Architecture of the hierarchical ViT-3D MAE (plain data; checked on construction).

    Widths and heads double at every stage (96/192/384, 2/4/8 heads in the full pose
    config); LayerNorm eps is 1e-6, the qkv projections have biases and the MLP uses GELU,
    as in the reference. The mask unit is the per-axis product of ``q_strides``.

    Args:
        input_size: (T, H, W) of one input ``[C, T, H, W]`` (pose: (400, 1, 72)).
        in_channels: C, channels of the input (pose: 1; CT: 1 or 3).
        patch_size: (t, h, w) kernel = stride of the Conv3d patch embedding; must divide
            ``input_size`` on every axis.
        embed_dim: token width of stage 0.
        num_heads: attention heads of stage 0 (``embed_dim`` must split evenly).
        stages: number of blocks per stage (each at least 1).
        q_strides: per-axis max-pool stride of the queries entering stage 1, 2, ...
            (one per stage after the first); their product must divide the token grid.
        mask_unit_attn: per stage, True for attention inside mask units, False for global.
        mlp_ratio: MLP hidden width over block width.
        out_embed_dims: width of each stage's output projection (probing features; the last
            one feeds the decoder).
        decoder_embed_dim: decoder width.
        decoder_depth: decoder transformer blocks (at least 1).
        decoder_num_heads: decoder attention heads.
        mask_ratio: fraction of mask units removed in training; at least one unit must be
            kept and one removed.
        norm_pix_loss: normalise each target patch by its own mean and variance.
        decoding_strategy: ``single`` (decode from the last stage) or ``multi`` (decode from
            the sum of every stage's projection, fused onto the final grid).
        velocity_gain: > 0 adds a velocity channel per input channel, ``gain`` x the change
            from the previous frame (:func:`strata.models.blocks.with_velocity`), to the
            patches and to the reconstruction targets; 0: the input alone.
    """

    input_size: Shape3
    in_channels: int
    patch_size: Shape3
    embed_dim: int
    num_heads: int
    stages: tuple[int, ...]
    q_strides: tuple[Shape3, ...]
    mask_unit_attn: tuple[bool, ...]
    mlp_ratio: float
    out_embed_dims: tuple[int, ...]
    decoder_embed_dim: int
    decoder_depth: int
    decoder_num_heads: int
    mask_ratio: float
    norm_pix_loss: bool
    decoding_strategy: Literal["single", "multi"] = "single"  # "single": checkpoints written before the option
    velocity_gain: float = 0.0

    def __post_init__(self) -> None:
        if self.velocity_gain < 0:
            raise ValueError(f"velocity_gain must be >= 0, got {self.velocity_gain}")
        for name in ("input_size", "patch_size"):
            value = getattr(self, name)
            if len(value) != 3 or any(v < 1 for v in value):
                raise ValueError(f"{name} must be three positive integers (T, H, W), got {value}")
        positive = ("in_channels", "embed_dim", "num_heads", "decoder_embed_dim", "decoder_depth",
                    "decoder_num_heads")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.stages or any(n < 1 for n in self.stages):
            raise ValueError(f"stages must list at least one stage of at least one block, got {self.stages}")
        n = len(self.stages)
        if len(self.q_strides) != n - 1:
            raise ValueError(f"q_strides needs one stride per stage after the first: {n} stages, "
                             f"{len(self.q_strides)} strides")
        for i, stride in enumerate(self.q_strides):
            if len(stride) != 3 or any(s < 1 for s in stride):
                raise ValueError(f"q_strides[{i}] must be three positive integers, got {stride}")
        for name in ("mask_unit_attn", "out_embed_dims"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} needs one entry per stage ({n}), got {getattr(self, name)}")
        if any(d < 1 for d in self.out_embed_dims):
            raise ValueError(f"out_embed_dims must be positive, got {self.out_embed_dims}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.decoder_embed_dim % self.decoder_num_heads:
            raise ValueError(f"decoder_embed_dim {self.decoder_embed_dim} is not divisible by "
                             f"decoder_num_heads {self.decoder_num_heads}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be positive, got {self.mlp_ratio}")
        for axis, (size, patch) in enumerate(zip(self.input_size, self.patch_size)):
            if size % patch:
                raise ValueError(f"axis {AXES[axis]}: input size {size} is not divisible by patch size {patch}")
        grid = self.token_grid
        for axis in range(3):
            stride = self.mask_unit_shape[axis]
            if grid[axis] % stride:
                raise ValueError(
                    f"axis {AXES[axis]}: the q-strides {[s[axis] for s in self.q_strides]} (product {stride}) "
                    f"do not divide the token grid of {grid[axis]} tokens on this axis")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must lie in (0, 1), got {self.mask_ratio}")
        if not 1 <= self.num_kept < self.num_units:
            raise ValueError(f"mask_ratio {self.mask_ratio} keeps {self.num_kept} of {self.num_units} mask units; "
                             "at least one must be kept and one removed")

    # ------------------------------------------------------------------ derived sizes

    @property
    def token_grid(self) -> Shape3:
        """Tokens per axis after the patch embedding, e.g. (200, 1, 24)."""
        return _div3(self.input_size, self.patch_size)

    @property
    def mask_unit_shape(self) -> Shape3:
        """Tokens per axis of one mask unit at stage 0: the product of the q-strides."""
        return _prod3(self.q_strides)

    @property
    def unit_grid(self) -> Shape3:
        """Mask units per axis (= the final stage's token grid)."""
        return _div3(self.token_grid, self.mask_unit_shape)

    @property
    def num_units(self) -> int:
        return math.prod(self.unit_grid)

    @property
    def num_kept(self) -> int:
        """Units kept by masking: floor(U * (1 - ratio)), tolerant of float error (as MAE's int())."""
        return int(self.num_units * (1.0 - self.mask_ratio) + 1e-9)

    def stage_dim(self, stage: int) -> int:
        return self.embed_dim * 2 ** stage

    def stage_heads(self, stage: int) -> int:
        return self.num_heads * 2 ** stage

    def stage_grid(self, stage: int) -> Shape3:
        """Token grid of ``stage`` (queries pooled by the strides of stages 1..stage)."""
        return _div3(self.token_grid, _prod3(self.q_strides[:stage]))

    def stage_unit_shape(self, stage: int) -> Shape3:
        """Tokens per axis of one mask unit at ``stage``."""
        return _div3(self.mask_unit_shape, _prod3(self.q_strides[:stage]))

    def receptive_field(self, stage: int) -> Shape3:
        """Input elements per axis that one token of ``stage`` covers."""
        strides = _prod3(self.q_strides[:stage])
        return (self.patch_size[0] * strides[0], self.patch_size[1] * strides[1], self.patch_size[2] * strides[2])

    @property
    def target_patch(self) -> Shape3:
        """Per unit, the (t, h, w) extent of the time-strided target (every pt-th frame)."""
        t, h, w = self.receptive_field(len(self.stages) - 1)
        return t // self.patch_size[0], h, w

    @property
    def embedded_channels(self) -> int:
        """Channels the patches are cut from: the input's, doubled by velocity channels."""
        return self.in_channels * (2 if self.velocity_gain else 1)

    @property
    def pred_dim(self) -> int:
        """Values predicted per mask unit: target patch size times channels (pose: 288)."""
        return math.prod(self.target_patch) * self.embedded_channels


# --------------------------------------------------------------------------- components


def pool_tokens(x: Tensor, unit: Shape3, stride: Shape3) -> Tensor:
    """Max-pool the tokens of every mask unit by ``stride``.

    ``x``: [..., U, L, D] with the L = prod(unit) tokens of a unit in raster order ->
    [..., U, L / prod(stride), D]. Each output token is the max over a stride-sized window
    of neighbouring tokens inside the unit.
    """
    t, h, w = _div3(unit, stride)
    return reduce(x, "... u (t qt h qh w qw) d -> ... u (t h w) d", "max",
                  t=t, h=h, w=w, qt=stride[0], qh=stride[1], qw=stride[2])


class MaskUnitAttention(nn.Module):
    """Attention inside mask units or over all tokens, with optional query pooling.

    Queries are max-pooled by ``q_stride`` inside each unit (so a pooled token summarises a
    neighbourhood); keys and values keep the input resolution. Local attention runs every
    unit as its own sequence; global attention flattens all units into one.

    Args:
        dim: input width.
        dim_out: output width (the q/k/v width; heads split it).
        heads: attention heads.
        q_stride: (t, h, w) max-pool stride of the queries ((1, 1, 1): none).
        unit_shape: (t, h, w) tokens of one mask unit at the input resolution.
        local: attend inside mask units (True) or globally (False).
    """

    def __init__(self, *, dim: int, dim_out: int, heads: int, q_stride: Shape3, unit_shape: Shape3,
                 local: bool) -> None:
        super().__init__()
        if dim_out % heads:
            raise ValueError(f"dim_out {dim_out} is not divisible by heads {heads}")
        if any(u % s for u, s in zip(unit_shape, q_stride)):
            raise ValueError(f"q_stride {q_stride} does not divide the mask unit {unit_shape}")
        self.heads, self.head_dim = heads, dim_out // heads
        self.q_stride, self.unit_shape, self.local = q_stride, unit_shape, local
        self.pools = math.prod(q_stride) > 1
        self.qkv = nn.Linear(dim, 3 * dim_out)
        self.proj = nn.Linear(dim_out, dim_out)
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x: Tensor, return_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        """``x``: [B, U, L, dim] -> ([B, U, Lq, dim_out], attention or None).

        With ``return_attention`` the explicit softmax path runs and returns the
        probabilities: [B, heads, U, Lq, L] for local attention, [B, heads, U*Lq, U*L] for
        global attention (tokens ordered unit by unit). Otherwise the fused SDPA path runs.
        """
        b, u = x.shape[:2]
        qkv = self.qkv(x)  # (B, U, L, 3 * dim_out)
        if self.local:  # every unit is its own sequence
            q, k, v = rearrange(qkv, "b u l (three h d) -> three (b u) h l d", three=3, h=self.heads)
            if self.pools:
                q = pool_tokens(q.unsqueeze(2), self.unit_shape, self.q_stride).squeeze(2)  # ((B U), h, Lq, d)
        else:  # one sequence of all (kept) tokens
            q, k, v = rearrange(qkv, "b u l (three h d) -> three b h (u l) d", three=3, h=self.heads)
            if self.pools:
                q = rearrange(q, "b h (u l) d -> b h u l d", u=u)
                q = rearrange(pool_tokens(q, self.unit_shape, self.q_stride), "b h u l d -> b h (u l) d")
        if return_attention:
            attn = self.softmax((q * self.head_dim ** -0.5) @ k.transpose(-2, -1))  # (B', h, Nq, Nk)
            out = attn @ v  # (B', h, Nq, d)
        else:
            attn = None
            out = F.scaled_dot_product_attention(q, k, v)  # (B', h, Nq, d)
        if self.local:
            out = rearrange(out, "(b u) h l d -> b u l (h d)", b=b)
            if attn is not None:
                attn = rearrange(attn, "(b u) h lq lk -> b h u lq lk", b=b)
        else:
            out = rearrange(out, "b h (u l) d -> b u l (h d)", u=u)
        return self.proj(out), attn


class HieraBlock(nn.Module):
    """Pre-norm transformer block on mask-unit tokens; the first block of a stage pools.

    When the width changes (the first block of stages 1, 2, ...), the residual is the
    max-pooled linear projection of the normalised input (``proj``), matching the pooled
    queries of the attention.

    Args:
        dim: input width.
        dim_out: output width.
        heads: attention heads.
        mlp_ratio: MLP hidden width over ``dim_out``.
        q_stride: (t, h, w) query pooling stride ((1, 1, 1) inside a stage).
        unit_shape: (t, h, w) tokens of a mask unit at the input resolution.
        local: mask-unit attention (True) or global attention (False).
    """

    def __init__(self, *, dim: int, dim_out: int, heads: int, mlp_ratio: float, q_stride: Shape3,
                 unit_shape: Shape3, local: bool) -> None:
        super().__init__()
        self.q_stride, self.unit_shape = q_stride, unit_shape
        self.norm1 = nn.LayerNorm(dim, eps=NORM_EPS)
        self.attn = MaskUnitAttention(dim=dim, dim_out=dim_out, heads=heads, q_stride=q_stride,
                                      unit_shape=unit_shape, local=local)
        self.norm2 = nn.LayerNorm(dim_out, eps=NORM_EPS)
        self.mlp = Mlp(dim=dim_out, hidden=int(dim_out * mlp_ratio))
        self.proj = nn.Linear(dim, dim_out) if dim != dim_out else None
        if self.proj is None and math.prod(q_stride) > 1:
            raise ValueError("a pooling block must change the width (its residual is a pooled projection)")

    def forward(self, x: Tensor, return_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        """``x``: [B, U, L, dim] -> ([B, U, L / prod(q_stride), dim_out], attention or None)."""
        x_norm = self.norm1(x)
        if self.proj is not None:
            x = pool_tokens(self.proj(x_norm), self.unit_shape, self.q_stride)  # (B, U, Lq, dim_out)
        y, attn = self.attn(x_norm, return_attention)
        x = x + y
        return x + self.mlp(self.norm2(x)), attn


class Hiera3D(nn.Module):
    """The hierarchical encoder: patch embedding, position embeddings, stages, projections.

    Parameter names follow hBehaveMAE's ``GeneralizedHiera`` (``blocks`` is one flat list
    over all stages) so published weights map one to one (see ``hiera3d_checkpoint``).

    Args:
        config: the architecture.
    """

    def __init__(self, *, config: Hiera3DConfig) -> None:
        super().__init__()
        self.config = c = config
        t, h, w = c.token_grid
        self.patch_embed = PatchEmbed3D(in_channels=c.in_channels, dim=c.embed_dim, patch_size=c.patch_size,
                                        velocity_gain=c.velocity_gain)
        self.pos_embed_spatial = nn.Parameter(torch.zeros(1, h * w, c.embed_dim))
        self.pos_embed_temporal = nn.Parameter(torch.zeros(1, t, c.embed_dim))
        self.blocks = nn.ModuleList()
        self.block_stage: list[int] = []  # stage of each block's output
        for stage, depth in enumerate(c.stages):
            for i in range(depth):
                pools = stage > 0 and i == 0
                in_stage = stage - 1 if pools else stage  # the pooling block still sees the previous stage
                self.blocks.append(HieraBlock(
                    dim=c.stage_dim(in_stage), dim_out=c.stage_dim(stage), heads=c.stage_heads(stage),
                    mlp_ratio=c.mlp_ratio, q_stride=c.q_strides[stage - 1] if pools else (1, 1, 1),
                    unit_shape=c.stage_unit_shape(in_stage), local=c.mask_unit_attn[in_stage]))
                self.block_stage.append(stage)
        self.stage_ends = [sum(c.stages[:s + 1]) - 1 for s in range(len(c.stages))]
        self.projections = nn.ModuleList(nn.Linear(c.stage_dim(s), d) for s, d in enumerate(c.out_embed_dims))
        self.norm = nn.LayerNorm(c.out_embed_dims[-1], eps=NORM_EPS)  # on the decoder's input

    def embed(self, x: Tensor) -> Tensor:
        """``x``: [B, C, T, H, W] -> tokens grouped by mask unit [B, U, L, D] (with positions)."""
        c = self.config
        if tuple(x.shape[1:]) != (c.in_channels, *c.input_size):
            raise ValueError(f"expected input [B, {c.in_channels}, {', '.join(map(str, c.input_size))}], "
                             f"got {list(x.shape)}")
        tokens = self.patch_embed(x)  # (B, t, h, w, D)
        _, h, w = c.token_grid
        pos = self.pos_embed_temporal[:, :, None, :] + self.pos_embed_spatial[:, None, :, :]  # (1, t, h*w, D)
        tokens = tokens + rearrange(pos, "o t (h w) d -> o t h w d", h=h, w=w)
        mt, mh, mw = c.mask_unit_shape
        return rearrange(tokens, "b (ut t) (uh h) (uw w) d -> b (ut uh uw) (t h w) d", t=mt, h=mh, w=mw)

    def forward(self, x: Tensor, ids_keep: Tensor | None = None, return_attention: bool = False
                ) -> tuple[list[Tensor], list[Tensor]]:
        """Run the stages on the kept units.

        ``x``: [B, C, T, H, W]; ``ids_keep``: [B, U_keep] indices of kept units (None: all).
        Returns each stage's output [B, U_keep, L_s, D_s] (tokens grouped by unit) and,
        with ``return_attention``, each block's attention (see :class:`MaskUnitAttention`).
        """
        x = self.embed(x)  # (B, U, L, D)
        if ids_keep is not None:
            x = torch.gather(x, 1, ids_keep[:, :, None, None].expand(-1, -1, *x.shape[2:]))  # (B, U_keep, L, D)
        stages, attentions = [], []
        for i, block in enumerate(self.blocks):
            x, attn = block(x, return_attention)
            if attn is not None:
                attentions.append(attn)
            if i in self.stage_ends:
                stages.append(x)
        return stages, attentions

    def to_grid(self, x: Tensor, stage: int) -> Tensor:
        """Unit-grouped tokens of ``stage`` [B, U, L, D] (all units) -> raster [B, t, h, w, D]."""
        ut, uh, uw = self.config.unit_grid
        mt, mh, mw = self.config.stage_unit_shape(stage)
        return rearrange(x, "b (ut uh uw) (t h w) d -> b (ut t) (uh h) (uw w) d",
                         ut=ut, uh=uh, uw=uw, t=mt, h=mh, w=mw)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """Multi-scale embeddings for probing (no masking): per stage its projected
        output on the stage's token grid, [B, t_s, h_s, w_s, out_embed_dims[s]]."""
        stages, _ = self(x)
        return [self.to_grid(proj(s), i) for i, (proj, s) in enumerate(zip(self.projections, stages))]

    def raster_order(self, stage: int) -> Tensor:
        """For each unit-grouped token position of ``stage``, its raster index in the grid [N_s]."""
        t, h, w = self.config.stage_grid(stage)
        mt, mh, mw = self.config.stage_unit_shape(stage)
        index = torch.arange(t * h * w).view(t, h, w)  # raster index of every grid position
        return rearrange(index, "(ut t) (uh h) (uw w) -> (ut uh uw t h w)", t=mt, h=mh, w=mw)

    def forward_attention(self, x: Tensor) -> list[Tensor]:
        """Each block's attention probabilities (explicit path, no masking), for rollout.

        Returns per block a dense [B, heads, N_q, N_k] in raster order of the query
        stage's and the key stage's token grids (local attention is block-diagonal over
        mask units, zero across units; a pooling block has N_q < N_k).
        """
        _, attentions = self(x, return_attention=True)
        dense = []
        for i, (block, attn) in enumerate(zip(self.blocks, attentions)):
            q_stage = self.block_stage[i]
            k_stage = q_stage - 1 if math.prod(block.q_stride) > 1 else q_stage
            if attn.dim() == 5:  # local: (B, h, U, Lq, Lk) -> block-diagonal (B, h, U*Lq, U*Lk)
                b, heads, u, lq, lk = attn.shape
                full = attn.new_zeros(b, heads, u, lq, u, lk)
                full.diagonal(dim1=2, dim2=4).copy_(rearrange(attn, "b h u lq lk -> b h lq lk u"))
                attn = rearrange(full, "b h u lq v lk -> b h (u lq) (v lk)")
            q_order = torch.argsort(self.raster_order(q_stage)).to(attn.device)
            k_order = torch.argsort(self.raster_order(k_stage)).to(attn.device)
            dense.append(attn[:, :, q_order][:, :, :, k_order])
        return dense

    def pooling_matrices(self) -> list[Tensor | None]:
        """Per block, the pooling assignment [N_q, N_k] in the raster order of
        :meth:`forward_attention` (each pooled token averages its window), None when the
        block does not pool: the residual term of a pooling layer in attention rollout."""
        out: list[Tensor | None] = []
        for i, block in enumerate(self.blocks):
            if math.prod(block.q_stride) == 1:
                out.append(None)
                continue
            stage = self.block_stage[i]
            keys = self.raster_order(stage - 1).view(self.config.num_units, -1)  # (U, L_k) raster key indices
            t, h, w = _div3(block.unit_shape, block.q_stride)
            windows = rearrange(keys, "u (t qt h qh w qw) -> (u t h w) (qt qh qw)", t=t, h=h, w=w,
                                qt=block.q_stride[0], qh=block.q_stride[1], qw=block.q_stride[2])
            windows = windows[torch.argsort(self.raster_order(stage))]  # (N_q, window), rows in raster order
            n_k = keys.numel()
            matrix = torch.zeros(windows.shape[0], n_k)
            matrix.scatter_(1, windows, 1.0 / windows.shape[1])
            out.append(matrix)
        return out


class Hiera3DDecoder(nn.Module):
    """Light MAE decoder on the final-stage grid (one token per mask unit).

    Parameter names follow hBehaveMAE (``decoder_embed`` -> ``embed`` etc.).

    Args:
        config: the architecture.
    """

    def __init__(self, *, config: Hiera3DConfig) -> None:
        super().__init__()
        self.config = c = config
        d = c.decoder_embed_dim
        self.embed = nn.Linear(c.out_embed_dims[-1], d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, c.num_units, d))
        self.blocks = nn.ModuleList(Block(dim=d, heads=c.decoder_num_heads, mlp_ratio=c.mlp_ratio, norm_eps=NORM_EPS)
                                    for _ in range(c.decoder_depth))
        self.norm = nn.LayerNorm(d, eps=NORM_EPS)
        self.pred = nn.Linear(d, c.pred_dim)

    def forward(self, latent: Tensor, ids_keep: Tensor, explicit_attention: bool = False) -> Tensor:
        """``latent``: [B, U_keep, D_enc] of the kept units ``ids_keep`` [B, U_keep] ->
        predictions [B, U, pred_dim] for every unit (raster order of the unit grid)."""
        x = self.embed(latent)  # (B, U_keep, d)
        b, d = x.shape[0], x.shape[-1]
        full = self.mask_token.expand(b, self.config.num_units, d)  # (B, U, d)
        x = full.scatter(1, ids_keep[:, :, None].expand(-1, -1, d), x)  # kept units back in place
        x = x + self.pos_embed
        for block in self.blocks:
            x, _ = block(x, return_attention=explicit_attention)
        return self.pred(self.norm(x))  # (B, U, pred_dim)


# --------------------------------------------------------------------------- the MAE


class Hiera3DMAE(TrainableModel):
    """Masked autoencoder: mask units -> :class:`Hiera3D` -> :class:`Hiera3DDecoder` -> loss.

    Masks follow MAE: ``mask: [B, U]`` bool, True where a unit is removed (predicted).
    The config is passed whole (nanoGPT style) and positionally, as the model registry
    builds every family with ``cls(config)``.

    Args:
        config: the architecture (including mask ratio and target normalisation).
    """

    def __init__(self, config: Hiera3DConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Hiera3D(config=config)
        # multi-scale fusion: stage s's unit tokens [L_s x D_s] -> one final-grid token. A
        # linear map of the flattened unit equals the reference's Conv3d with kernel = stride
        # = the unit (weights flattened as (d t h w)); kept out of ``single`` models so their
        # state dicts are unchanged.
        self.fusion_heads = nn.ModuleList(
            nn.Linear(d * math.prod(config.stage_unit_shape(s)), config.out_embed_dims[-1])
            for s, d in enumerate(config.out_embed_dims[:-1])) if config.decoding_strategy == "multi" else None
        self.decoder = Hiera3DDecoder(config=config)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """hBehaveMAE's init: truncated-normal embeddings, Xavier linears and patch conv."""
        for p in (self.encoder.pos_embed_spatial, self.encoder.pos_embed_temporal,
                  self.decoder.mask_token, self.decoder.pos_embed):
            nn.init.trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.encoder.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.data.view(w.shape[0], -1))  # like a linear layer on the flattened patch
        nn.init.zeros_(self.encoder.patch_embed.proj.bias)

    def no_weight_decay(self) -> set[str]:
        """As hBehaveMAE: the encoder's position embeddings are not decayed."""
        return {"encoder.pos_embed_spatial", "encoder.pos_embed_temporal"}

    # ------------------------------------------------------------------ named MAE steps

    def random_masking(self, batch_size: int, device: torch.device | str = "cpu",
                       generator: torch.Generator | None = None) -> Tensor:
        """Random mask-unit masking: [B, U] bool, True = removed; ``num_kept`` units kept per
        sample. Uses ``generator`` or, when None, the global torch RNG."""
        u, keep = self.config.num_units, self.config.num_kept
        noise = torch.rand(batch_size, u, generator=generator, device=device)  # (B, U)
        ids_keep = torch.argsort(noise, dim=1)[:, :keep]  # small noise is kept
        mask = torch.ones(batch_size, u, dtype=torch.bool, device=device)
        return mask.scatter(1, ids_keep, False)

    def kept_ids(self, mask: Tensor) -> Tensor:
        """Indices [B, U_keep] of the kept units of ``mask`` [B, U], ascending."""
        if mask.dim() != 2 or mask.shape[1] != self.config.num_units:
            raise ValueError(f"mask must be [B, {self.config.num_units}], got {list(mask.shape)}")
        kept = (~mask).sum(dim=1)
        if not bool((kept == kept[0]).all()) or int(kept[0]) < 1:
            raise ValueError(f"every sample must keep the same positive number of units, got {kept.tolist()}")
        return torch.argsort(mask.to(torch.int8), dim=1, stable=True)[:, :int(kept[0])]

    def forward_encoder(self, x: Tensor, mask: Tensor, explicit_attention: bool = False) -> tuple[Tensor, Tensor]:
        """``x``: [B, C, T, H, W], ``mask``: [B, U] -> (latent [B, U_keep, D_out], ids_keep [B, U_keep]).

        The latent is the last stage's projected, layer-normalised output (one token per unit).
        """
        ids_keep = self.kept_ids(mask)
        stages, _ = self.encoder(x, ids_keep, return_attention=explicit_attention)
        return self.encoder.norm(self.fuse_stages(stages)), ids_keep

    def fuse_stages(self, stages: list[Tensor]) -> Tensor:
        """Stage outputs [B, U_keep, L_s, D_s] -> the decoder's input [B, U_keep, D_out]
        (before the norm): the last stage's projection, plus with ``multi`` decoding every
        earlier stage's projection with each unit's L_s tokens mapped to one token."""
        projections = self.encoder.projections
        fused = rearrange(projections[-1](stages[-1]), "b u l d -> b (u l) d")  # final stage: l = 1
        if self.fusion_heads is not None:
            for head, proj, stage in zip(self.fusion_heads, projections, stages):
                fused = fused + head(rearrange(proj(stage), "b u l d -> b u (d l)"))
        return fused

    def forward_decoder(self, latent: Tensor, ids_keep: Tensor, explicit_attention: bool = False) -> Tensor:
        """-> predictions [B, U, pred_dim] for every unit."""
        return self.decoder(latent, ids_keep, explicit_attention)

    def target(self, x: Tensor) -> Tensor:
        """Time-strided per-unit targets [B, U, pred_dim]: every ``patch_size[0]``-th frame,
        cut into the units' extents, flattened (t h w c); per-patch normalised if configured."""
        c = self.config
        ut, uh, uw = c.unit_grid
        strided = self.encoder.patch_embed.stem(x)[:, :, ::c.patch_size[0]]  # (B, C', T/pt, H, W)
        target = rearrange(strided, "b c (ut t) (uh h) (uw w) -> b (ut uh uw) (t h w c)", ut=ut, uh=uh, uw=uw)
        if c.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + TARGET_EPS) ** 0.5
        return target

    def forward_loss(self, x: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """Mean squared error over the removed units only (``mask`` True)."""
        per_unit = ((pred - self.target(x)) ** 2).mean(dim=-1)  # (B, U)
        return (per_unit * mask).sum() / mask.sum()

    def forward(self, x: Tensor, mask: Tensor | None = None, explicit_attention: bool = False
                ) -> tuple[Tensor, Tensor, Tensor]:
        """``x``: [B, C, T, H, W] -> (loss, pred [B, U, pred_dim], mask [B, U]).

        ``mask`` defaults to :meth:`random_masking` from the global RNG.
        ``explicit_attention`` runs the explicit softmax attention (rollout's path; the
        benchmark's baseline) instead of the fused kernel; the result is the same.
        """
        if mask is None:
            mask = self.random_masking(x.shape[0], x.device)
        latent, ids_keep = self.forward_encoder(x, mask, explicit_attention)
        pred = self.forward_decoder(latent, ids_keep, explicit_attention)
        return self.forward_loss(x, pred, mask), pred, mask

    def per_patch_mean_loss(self, x: Tensor, mask: Tensor) -> Tensor:
        """Baseline: the loss of predicting the per-patch mean, under ``mask``.

        Every removed unit's target values are predicted by the mean of that unit's own
        target values (an oracle constant per patch: it knows each hidden patch's level,
        so it is a strict bar). The loss is then the mean within-patch (biased) variance of
        the targets. A model must predict structure inside patches (how the pose moves
        within 4 frames, how intensity varies in a CT patch) to beat it. With
        ``norm_pix_loss`` the targets have zero mean and unit variance per patch, and the
        baseline is (P - 1) / P for P values per patch.
        """
        target = self.target(x)  # (B, U, P)
        per_unit = target.var(dim=-1, unbiased=False)  # = MSE of predicting the patch mean
        return (per_unit * mask).sum() / mask.sum()

    def step_inputs(self, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        """The global batch's masks ``{"mask": [B, U] bool}`` (see :meth:`random_masking`)."""
        return {"mask": self.random_masking(batch_size, generator=generator)}

    def training_step(self, batch: dict[str, Tensor]) -> StepOutput:
        """``batch["x"]``: [B, C, T, H, W] float; ``batch["mask"]`` [B, U] if given (the
        loop's :meth:`step_inputs`), else masks from the global RNG."""
        x = batch["x"]
        loss, _, mask = self(x, batch.get("mask"))
        with torch.no_grad():
            baseline = self.per_patch_mean_loss(x, mask)
        return StepOutput(loss, {"loss": loss.item(), "mask_ratio": mask.float().mean().item(),
                                 "per_patch_mean_loss": baseline.item()})
