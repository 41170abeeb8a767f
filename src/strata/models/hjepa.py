"""H-JEPA: hierarchical joint-embedding predictive architecture, docs/design.md §4.2.

Method, in the order the code runs (:meth:`HJEPA.forward`):

1. **Token grid.** :class:`~strata.models.blocks.PatchEmbed3D` cuts the input
   ``[B, C, T, H, W]`` into non-overlapping 3-D patches, a token grid ``(t, h, w)``
   flattened in raster order (``N = t * h * w``). Pose windows ``[1, T, 1, F]`` give a
   time x feature-group grid; CT volumes ``[C, H, W, D]`` are passed unchanged, so the
   model's (T, H, W) axes are the volume's (H, W, D).
2. **Multi-block masking** (:class:`MultiBlockMaskSampler`, I-JEPA adapted to 3-D grids
   and to time): ``M`` target blocks (boxes on the grid, scale and aspect ratio drawn per
   batch, position per sample) and one large context box; the context loses every target
   token. Block starts are drawn with ``randint(0, size - extent + 1)``, so every position,
   the last row / column / slice included, can be chosen (I-JEPA's ``randint(0, size -
   extent)`` never picks the last one). Masks come from the global torch RNG (or a
   generator), so a resumed run replays them exactly.
3. **Context encoder** (:class:`ViTEncoder`): a ViT (patch embedding, position embeddings,
   shared :class:`~strata.models.blocks.Block`, final LayerNorm) over the context tokens
   only; samples with fewer context tokens are padded and padding is never attended.
4. **Target encoder**: an EMA copy of the context encoder (no gradients, not optimised) sees
   the whole input; its output, layer-normalised (I-JEPA), is the target of every token.
   With ``target_centering`` the loss sees each target minus the batch mean of its grid
   position (:func:`center_per_position`): sin-cos positions make most of a token, and a
   predictor that only knows where a hidden token is can no longer lower the loss.
5. **Predictor** (:class:`Predictor`): a narrow ViT that reads the embedded context tokens
   plus one mask token (with its position embedding) per target position, once per target
   block, and projects back to the encoder width.
6. **Hierarchy** (:class:`LevelProjection`). Predictions are scattered back into the FULL
   token grid, one grid per (sample, target block), with a validity mask that is True
   exactly on that block. Level 0 is the identity; level ``l`` average-pools windows of
   ``2**l`` consecutive tokens along ``pool_axis`` (one grid row: the other two grid
   coordinates fixed) and applies that level's linear projection. A pooled window is valid
   only when ALL its slots are valid, i.e. the window lies inside the target block; since
   every grid holds one block, a window never mixes two blocks or two rows, and padded or
   unpredicted slots never reach a valid window. ``target_heads`` says what the targets
   pass through: the predictions' own projections (``shared``, no gradient), an EMA copy of
   them (``ema``), or nothing (``none``: level ``l`` of the targets, and of the probed
   embeddings, is the plain mean of ``2**l`` target tokens; projections and FPN are then
   prediction heads only).
7. **FPN** (:class:`FPN`, optional): lateral linear projections to the FPN width, a
   top-down path from the coarsest level with linear interpolation along ``pool_axis``
   (``align_corners=False``, normalised by the interpolated validity so invalid slots
   contribute nothing), fusion by ``add`` or ``concat`` + linear, and a smoothing Conv1d
   (kernel 3 along ``pool_axis``) per level.
8. **Loss** (:meth:`HJEPA.forward_loss`): per level, smooth L1 or MSE between the
   layer-normalised predicted and target features, averaged over valid windows; the
   levels are summed with ``level_weights``. Added to it, VICReg's variance hinge and
   covariance term (:func:`vicreg_terms`, weights ``variance_weight`` /
   ``covariance_weight``) on the context encoder's outputs centred per grid position
   (:func:`position_centred`): every width dimension must vary with the input, not with
   the position, which keeps the EMA targets from collapsing.
9. **EMA** (:meth:`HJEPA.after_optimizer_step`): after every optimizer step,
   ``theta_target <- m * theta_target + (1 - m) * theta_context`` with ``m`` following the
   configured schedule from ``ema_momentum[0]`` to ``ema_momentum[1]``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from strata.models.blocks import Block, PatchEmbed3D, sincos_1d
from strata.training.interface import StepOutput, TrainableModel

Shape3 = tuple[int, int, int]
AXES = ("T (time; CT: H)", "H (CT: W)", "W (pose: features; CT: D)")
NORM_EPS = 1e-6  # LayerNorm eps of the encoders and predictor (as I-JEPA's ViTs)
MIN_LEVELS, MAX_LEVELS = 2, 4
CONTEXT_RETRIES = 100  # redraws of a context box that would keep no token


def largest_valid_levels(length: int) -> int:
    """The largest L <= MAX_LEVELS with ``length`` divisible by 2**(L-1) (at least 1)."""
    return max(n for n in range(1, MAX_LEVELS + 1) if length % 2 ** (n - 1) == 0)


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class FPNConfig:
    """Feature pyramid over the hierarchy levels (absent: no FPN and no FPN parameters).

    Args:
        dim: FPN width (lateral projections, top-down path, smoothing).
        fusion: how the top-down feature joins a level's lateral one: ``add``, or
            ``concat`` followed by a linear layer back to ``dim``.
    """

    dim: int
    fusion: Literal["add", "concat"]

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"fpn.dim must be at least 1, got {self.dim}")
        if self.fusion not in ("add", "concat"):
            raise ValueError(f"fpn.fusion must be 'add' or 'concat', got {self.fusion!r}")


@dataclass(frozen=True)
class HJEPAConfig:
    """Architecture, masking, hierarchy and EMA of H-JEPA (plain data; checked on construction).

    Args:
        input_size: (T, H, W) of one input ``[C, T, H, W]`` (pose: (64, 1, 72); CT: the
            volume's (H, W, D)).
        in_channels: C, input channels.
        patch_size: (t, h, w) kernel = stride of the Conv3d patch embedding; must divide
            ``input_size`` on every axis.
        embed_dim: width of the context and target encoders.
        depth: transformer blocks of the encoders.
        num_heads: attention heads of the encoders.
        mlp_ratio: MLP hidden width over block width (encoders and predictor).
        pos_embed: ``sincos`` (fixed, per-axis sine/cosine, concatenated) or ``learned``
            position embeddings, for the encoders and the predictor.
        predictor_embed_dim: predictor width (narrow: usually below ``embed_dim``).
        predictor_depth: predictor transformer blocks.
        predictor_num_heads: predictor attention heads.
        num_target_blocks: M, target blocks per sample.
        target_scale: (min, max) fraction of the grid's tokens in one target block.
        target_aspect_ratio: (min, max) of the log-uniform aspect ratio of a target block,
            relative to the grid's own shape (1 = shaped like the grid; see
            :meth:`MultiBlockMaskSampler.block_extent`).
        context_scale: (min, max) fraction of the grid in the context box (aspect ratio 1)
            before the target tokens are removed; ``context_scale[0]`` must exceed
            ``num_target_blocks * target_scale[1]`` so some context token always remains.
        levels: L, hierarchy levels (2..4); level l pools 2**l tokens along ``pool_axis``.
        pool_axis: token-grid axis the hierarchy pools along (0 = T: time for pose; for CT
            any grid axis, e.g. 2 = the volume's D, the slice axis). Its token count must be
            divisible by 2**(L-1).
        level_weights: loss weight of each level (L positive numbers).
        loss: regression loss between normalised predictions and targets: ``smooth_l1``
            (I-JEPA) or ``mse``.
        fpn: optional feature pyramid on top of the levels (null: none).
        ema_momentum: (start, end) momentum of the target encoder's EMA.
        ema_schedule: ``linear`` or ``cosine`` ramp from start to end over the run.
        target_heads: which level projections and FPN the targets (and the level
            embeddings) pass through: ``shared`` (the predictions' own modules, targets
            without gradient), ``ema`` (an EMA copy of them, updated with the target encoder,
            as BYOL's target projector) or ``none`` (level ``l`` of the targets is the plain
            ``2**l`` mean of the target tokens; the level projections and FPN are prediction
            heads only, so the FPN width must equal ``embed_dim``). Trained heads can lower
            the loss by mapping every input alike, which the level embeddings then inherit
            (effective rank 5 -> 2 on demo pose with ``shared``).
        target_centering: subtract from each target token the batch mean of its grid
            position before the loss, so the targets keep only what differs between inputs:
            a prediction from the mask token's position alone no longer lowers the loss.
        variance_weight: weight of VICReg's variance hinge (std of every dimension at
            least 1) on the context encoder's position-centred outputs (0: off). Centred per
            position, the term measures what the input changes, so positions cannot meet it.
        covariance_weight: weight of VICReg's covariance term (squared off-diagonal
            covariances over the width) on the same centred outputs (0: off).
        velocity_gain: > 0 embeds every input channel with a velocity channel, ``gain`` x the
            change from the previous frame (:func:`strata.models.blocks.with_velocity`);
            0: the input alone.
    """

    input_size: Shape3
    in_channels: int
    patch_size: Shape3
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    pos_embed: Literal["sincos", "learned"]
    predictor_embed_dim: int
    predictor_depth: int
    predictor_num_heads: int
    num_target_blocks: int
    target_scale: tuple[float, float]
    target_aspect_ratio: tuple[float, float]
    context_scale: tuple[float, float]
    levels: int
    pool_axis: int
    level_weights: tuple[float, ...]
    loss: Literal["smooth_l1", "mse"]
    fpn: FPNConfig | None
    ema_momentum: tuple[float, float]
    ema_schedule: Literal["linear", "cosine"]
    target_heads: Literal["shared", "ema", "none"] = "shared"
    target_centering: bool = False
    variance_weight: float = 0.0
    covariance_weight: float = 0.0
    velocity_gain: float = 0.0

    def __post_init__(self) -> None:
        if self.velocity_gain < 0:
            raise ValueError(f"velocity_gain must be >= 0, got {self.velocity_gain}")
        for name in ("input_size", "patch_size"):
            value = getattr(self, name)
            if len(value) != 3 or any(v < 1 for v in value):
                raise ValueError(f"{name} must be three positive integers (T, H, W), got {value}")
        for name in ("in_channels", "embed_dim", "depth", "num_heads", "predictor_embed_dim",
                     "predictor_depth", "predictor_num_heads", "num_target_blocks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for dim, heads in (("embed_dim", "num_heads"), ("predictor_embed_dim", "predictor_num_heads")):
            if getattr(self, dim) % getattr(self, heads):
                raise ValueError(f"{dim} {getattr(self, dim)} is not divisible by {heads} {getattr(self, heads)}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be positive, got {self.mlp_ratio}")
        if self.pos_embed not in ("sincos", "learned"):
            raise ValueError(f"pos_embed must be 'sincos' or 'learned', got {self.pos_embed!r}")
        for axis, (size, patch) in enumerate(zip(self.input_size, self.patch_size)):
            if size % patch:
                raise ValueError(f"axis {AXES[axis]}: input size {size} is not divisible by patch size {patch}")
        if self.pos_embed == "sincos":
            active = sum(n > 1 for n in self.token_grid)
            for name in ("embed_dim", "predictor_embed_dim"):
                if getattr(self, name) % 2 or getattr(self, name) < 2 * active:
                    raise ValueError(f"sincos position embeddings need an even {name} of at least "
                                     f"{2 * active} (2 per grid axis), got {getattr(self, name)}")
        for name in ("target_scale", "context_scale"):
            lo, hi = getattr(self, name)
            if not 0.0 < lo <= hi <= 1.0:
                raise ValueError(f"{name} must satisfy 0 < min <= max <= 1, got {(lo, hi)}")
        lo, hi = self.target_aspect_ratio
        if not 0.0 < lo <= hi:
            raise ValueError(f"target_aspect_ratio must satisfy 0 < min <= max, got {(lo, hi)}")
        if self.context_scale[0] <= self.num_target_blocks * self.target_scale[1]:
            raise ValueError(
                f"context_scale[0] = {self.context_scale[0]} must exceed num_target_blocks x target_scale[1] = "
                f"{self.num_target_blocks} x {self.target_scale[1]}, or the targets may remove the whole context")
        if not MIN_LEVELS <= self.levels <= MAX_LEVELS:
            raise ValueError(f"levels must lie in {MIN_LEVELS}..{MAX_LEVELS}, got {self.levels}")
        if self.pool_axis not in (0, 1, 2):
            raise ValueError(f"pool_axis must be 0, 1 or 2 (a token-grid axis), got {self.pool_axis}")
        length = self.token_grid[self.pool_axis]
        if length % 2 ** (self.levels - 1):
            best = largest_valid_levels(length)
            hint = (f"the largest valid levels is {best}" if best >= MIN_LEVELS else
                    f"no valid levels >= {MIN_LEVELS} exists (the largest valid is {best}); change patch_size or "
                    "input_size")
            raise ValueError(
                f"levels {self.levels} pools windows of 2**{self.levels - 1} = {2 ** (self.levels - 1)} tokens along "
                f"pool_axis {self.pool_axis} ({AXES[self.pool_axis]}), but that axis has {length} tokens, not "
                f"divisible by {2 ** (self.levels - 1)}; {hint} (tokens are never dropped)")
        if len(self.level_weights) != self.levels:
            raise ValueError(f"level_weights needs one weight per level ({self.levels}), got {self.level_weights}")
        if any(w <= 0 for w in self.level_weights):
            raise ValueError(f"level_weights must all be positive (a level of weight 0 would train nothing), "
                             f"got {self.level_weights}")
        if self.loss not in ("smooth_l1", "mse"):
            raise ValueError(f"loss must be 'smooth_l1' or 'mse', got {self.loss!r}")
        start, end = self.ema_momentum
        if not 0.0 <= start <= end <= 1.0:
            raise ValueError(f"ema_momentum must satisfy 0 <= start <= end <= 1, got {(start, end)}")
        if self.ema_schedule not in ("linear", "cosine"):
            raise ValueError(f"ema_schedule must be 'linear' or 'cosine', got {self.ema_schedule!r}")
        if self.variance_weight < 0 or self.covariance_weight < 0:
            raise ValueError(f"variance_weight and covariance_weight must be >= 0, got "
                             f"{(self.variance_weight, self.covariance_weight)}")
        if self.target_heads not in ("shared", "ema", "none"):
            raise ValueError(f"target_heads must be 'shared', 'ema' or 'none', got {self.target_heads!r}")
        if self.target_heads == "none" and self.fpn is not None and self.fpn.dim != self.embed_dim:
            raise ValueError(f"target_heads 'none' compares FPN outputs with pooled target tokens: fpn.dim "
                             f"{self.fpn.dim} must equal embed_dim {self.embed_dim}")

    @property
    def token_grid(self) -> Shape3:
        """Tokens per axis after the patch embedding, e.g. (32, 1, 3) for pose."""
        return (self.input_size[0] // self.patch_size[0], self.input_size[1] // self.patch_size[1],
                self.input_size[2] // self.patch_size[2])

    @property
    def num_tokens(self) -> int:
        return math.prod(self.token_grid)

    @property
    def level_dim(self) -> int:
        """Width of the features the loss compares (FPN width with an FPN)."""
        return self.fpn.dim if self.fpn is not None else self.embed_dim


# --------------------------------------------------------------------------- masking


@dataclass(frozen=True)
class BlockMasks:
    """Masks of one batch on the raster-ordered token grid (N tokens).

    ``context``: [B, N] bool, True where the context encoder sees the token.
    ``targets``: [B, M, N] bool, True where the token belongs to target block m.
    """

    context: Tensor
    targets: Tensor

    def to(self, device: torch.device | str) -> BlockMasks:
        return BlockMasks(self.context.to(device), self.targets.to(device))


class MultiBlockMaskSampler:
    """I-JEPA's multi-block masking on a 3-D token grid.

    Per batch, each of the M target blocks gets one extent (scale and aspect ratio drawn
    once, as I-JEPA, so every sample has the same number of tokens per block); per sample,
    each block gets its own start. The context box (aspect ratio 1) is drawn the same way,
    and every target token is removed from it. Starts are uniform over ALL valid positions,
    ``randint(0, size - extent + 1)``, so the last row / column / slice is reachable.
    Random numbers come from ``generator`` or, when None, the global torch RNG.

    Args:
        grid: (t, h, w) token grid.
        num_targets: M, target blocks per sample.
        target_scale: (min, max) fraction of tokens per target block.
        target_aspect_ratio: (min, max) aspect ratio of target blocks (see :meth:`block_extent`).
        context_scale: (min, max) fraction of tokens of the context box.
    """

    def __init__(self, *, grid: Shape3, num_targets: int, target_scale: tuple[float, float],
                 target_aspect_ratio: tuple[float, float], context_scale: tuple[float, float]) -> None:
        self.grid, self.num_targets = grid, num_targets
        self.target_scale, self.target_aspect_ratio = target_scale, target_aspect_ratio
        self.context_scale = context_scale
        self.active = [a for a in range(3) if grid[a] > 1]  # axes a block can extend along

    def block_extent(self, scale: tuple[float, float], aspect_ratio: tuple[float, float],
                     generator: torch.Generator | None = None) -> Shape3:
        """Extent (t, h, w) of a block holding a fraction ``s ~ U(scale)`` of the grid.

        With k grid axes longer than one token, a block covers a fraction ``f_i`` of axis
        i with ``prod(f_i) = s``. Each of the first k - 1 such axes gets an aspect ratio
        ``r_i = f_i / f_last``, log-uniform in ``aspect_ratio``. For a square 2-D grid this
        is I-JEPA's ``h = sqrt(s N r)``, ``w = sqrt(s N / r)``; ratios are relative to the
        grid's shape, so on an elongated grid (pose: 32 time x 3 agent tokens) a ratio of
        1 gives a block shaped like the grid. Extents are rounded and clamped to
        ``[1, size]`` (clamping can make the block smaller than ``s``).
        """
        s = scale[0] + float(torch.rand(1, generator=generator)) * (scale[1] - scale[0])
        lo, hi = math.log(aspect_ratio[0]), math.log(aspect_ratio[1])
        k = len(self.active)
        ratios = [math.exp(lo + float(torch.rand(1, generator=generator)) * (hi - lo)) for _ in range(k - 1)]
        last = (s / math.prod(ratios)) ** (1.0 / k) if k else 1.0
        fractions = dict(zip(self.active, [*(r * last for r in ratios), last]))
        return tuple(min(max(round(fractions[a] * self.grid[a]), 1), self.grid[a]) if a in fractions else 1
                     for a in range(3))  # type: ignore[return-value]

    def place(self, extent: Shape3, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """Boxes of ``extent`` at uniform random starts, one per sample: [B, t, h, w] bool.

        The start on axis i is ``randint(0, size_i - extent_i + 1)`` (upper end exclusive,
        so ``size_i - extent_i`` -- the box touching the last slice -- is included).
        """
        box = torch.ones(batch_size, *self.grid, dtype=torch.bool)
        for axis, (size, e) in enumerate(zip(self.grid, extent)):
            start = torch.randint(0, size - e + 1, (batch_size, 1), generator=generator)  # (B, 1)
            pos = torch.arange(size)[None]  # (1, size)
            inside = (pos >= start) & (pos < start + e)  # (B, size)
            shape = [batch_size, 1, 1, 1]
            shape[axis + 1] = size
            box &= inside.view(shape)
        return box

    def __call__(self, batch_size: int, generator: torch.Generator | None = None) -> BlockMasks:
        """Masks of one batch (on the CPU; move them with :meth:`BlockMasks.to`)."""
        targets = torch.stack([self.place(self.block_extent(self.target_scale, self.target_aspect_ratio, generator),
                                          batch_size, generator)
                               for _ in range(self.num_targets)], dim=1)  # (B, M, t, h, w)
        taken = targets.any(dim=1)  # (B, t, h, w): union of the target blocks
        extent = self.block_extent(self.context_scale, (1.0, 1.0), generator)
        context = self.place(extent, batch_size, generator) & ~taken  # (B, t, h, w)
        for _ in range(CONTEXT_RETRIES):  # rounding can leave a sample without context: redraw its box
            empty = ~context.flatten(1).any(dim=1)  # (B,)
            if not empty.any():
                break
            redraw = self.place(extent, int(empty.sum()), generator) & ~taken[empty]
            context[empty] = redraw
        else:
            raise RuntimeError(f"no context token left after {CONTEXT_RETRIES} draws: lower num_target_blocks or "
                               "target_scale, or raise context_scale")
        return BlockMasks(context=context.flatten(1), targets=targets.flatten(2))


def mask_to_ids(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Token indices of a boolean mask, padded: ``mask`` [..., N] -> (ids [..., K], valid [..., K]).

    K is the largest count over the leading axes; each row lists its True positions in
    ascending raster order, then padding (``valid`` False; the index points at some
    unselected token, so gathers stay in range).
    """
    counts = mask.sum(dim=-1)  # (...)
    k = int(counts.max())
    ids = torch.argsort((~mask).to(torch.int8), dim=-1, stable=True)[..., :k]  # selected first, in raster order
    valid = torch.arange(k, device=mask.device) < counts[..., None]  # (..., K)
    return ids, valid


def take(x: Tensor, ids: Tensor) -> Tensor:
    """Rows of ``x`` [B, N, D] at ``ids`` [B, K] -> [B, K, D]."""
    return torch.gather(x, 1, ids[..., None].expand(-1, -1, x.shape[-1]))


# --------------------------------------------------------------------------- encoders and predictor


def sincos_grid(grid: Shape3, dim: int) -> Tensor:
    """Fixed position encoding [N, dim] of the raster-ordered grid: one sin-cos part per
    axis longer than one token (widths as equal as even numbers allow), concatenated."""
    active = [a for a in range(3) if grid[a] > 1]
    if not active:
        return torch.zeros(1, dim)
    width = 2 * (dim // (2 * len(active)))
    widths = [width] * (len(active) - 1) + [dim - width * (len(active) - 1)]
    coords = torch.stack(torch.meshgrid(*(torch.arange(n) for n in grid), indexing="ij"), dim=-1)  # (t, h, w, 3)
    coords = coords.view(-1, 3)  # (N, 3), raster order
    return torch.cat([sincos_1d(coords[:, a], w) for a, w in zip(active, widths)], dim=-1)  # (N, dim)


class GridPositionEmbedding(nn.Module):
    """Position embeddings [1, N, dim] of the token grid: fixed sin-cos or learned.

    Args:
        grid: (t, h, w) token grid.
        dim: embedding width.
        kind: ``sincos`` (a non-persistent buffer) or ``learned`` (a parameter).
    """

    def __init__(self, *, grid: Shape3, dim: int, kind: Literal["sincos", "learned"]) -> None:
        super().__init__()
        self.pos: Tensor
        if kind == "sincos":
            self.register_buffer("pos", sincos_grid(grid, dim)[None], persistent=False)  # (1, N, dim)
        else:
            self.pos = nn.Parameter(torch.zeros(1, math.prod(grid), dim))
            nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self) -> Tensor:
        return self.pos


class ViTEncoder(nn.Module):
    """The context encoder (and, as an EMA copy, the target encoder): a ViT over 3-D patches.

    Args:
        config: the architecture.
    """

    def __init__(self, *, config: HJEPAConfig) -> None:
        super().__init__()
        self.config = c = config
        self.patch_embed = PatchEmbed3D(in_channels=c.in_channels, dim=c.embed_dim, patch_size=c.patch_size,
                                        velocity_gain=c.velocity_gain)
        self.pos_embed = GridPositionEmbedding(grid=c.token_grid, dim=c.embed_dim, kind=c.pos_embed)
        self.blocks = nn.ModuleList(Block(dim=c.embed_dim, heads=c.num_heads, mlp_ratio=c.mlp_ratio, norm_eps=NORM_EPS)
                                    for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.embed_dim, eps=NORM_EPS)

    def forward(self, x: Tensor, ids: Tensor | None = None, valid: Tensor | None = None,
                explicit_attention: bool = False) -> Tensor:
        """Encode the tokens ``ids`` of ``x``.

        ``x``: [B, C, T, H, W]; ``ids``: [B, K] raster indices of the tokens to encode
        (None: all N); ``valid``: [B, K] bool, False for padding (never attended to).
        Returns [B, K, D] (or [B, N, D]).
        """
        c = self.config
        if tuple(x.shape[1:]) != (c.in_channels, *c.input_size):
            raise ValueError(f"expected input [B, {c.in_channels}, {', '.join(map(str, c.input_size))}], "
                             f"got {list(x.shape)}")
        tokens = rearrange(self.patch_embed(x), "b t h w d -> b (t h w) d") + self.pos_embed()  # (B, N, D)
        if ids is not None:
            tokens = take(tokens, ids)  # (B, K, D)
        attn_mask = valid[:, None, None, :] if valid is not None else None  # (B, 1, 1, K): key padding
        for block in self.blocks:
            tokens, _ = block(tokens, mask=attn_mask, return_attention=explicit_attention)
        return self.norm(tokens)


class Predictor(nn.Module):
    """Narrow transformer that predicts target-block tokens from the context tokens.

    The context tokens are embedded to the predictor width and get their position
    embeddings; each target block is predicted in its own sequence (context + one mask
    token per target position, plus its position embedding), as I-JEPA does.

    Args:
        config: the architecture.
    """

    def __init__(self, *, config: HJEPAConfig) -> None:
        super().__init__()
        c = config
        d = c.predictor_embed_dim
        self.embed = nn.Linear(c.embed_dim, d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = GridPositionEmbedding(grid=c.token_grid, dim=d, kind=c.pos_embed)
        self.blocks = nn.ModuleList(Block(dim=d, heads=c.predictor_num_heads, mlp_ratio=c.mlp_ratio, norm_eps=NORM_EPS)
                                    for _ in range(c.predictor_depth))
        self.norm = nn.LayerNorm(d, eps=NORM_EPS)
        self.proj = nn.Linear(d, c.embed_dim)

    def forward(self, context: Tensor, context_ids: Tensor, context_valid: Tensor, target_ids: Tensor,
                target_valid: Tensor, explicit_attention: bool = False) -> Tensor:
        """``context``: [B, Kc, D] encoded context tokens at ``context_ids`` [B, Kc]
        (``context_valid`` [B, Kc], False = padding); ``target_ids`` / ``target_valid``:
        [B, M, Kt]. Returns predictions [B, M, Kt, D] (padded slots hold unused values)."""
        b, m, kt = target_ids.shape
        pos = self.pos_embed().expand(b, -1, -1)  # (B, N, d)
        ctx = self.embed(context) + take(pos, context_ids)  # (B, Kc, d)
        ctx = repeat(ctx, "b k d -> (b m) k d", m=m)  # one sequence per target block
        query_pos = take(pos, rearrange(target_ids, "b m k -> b (m k)"))  # (B, M*Kt, d)
        queries = self.mask_token + rearrange(query_pos, "b (m k) d -> (b m) k d", m=m)  # ((B M), Kt, d)
        x = torch.cat([ctx, queries], dim=1)  # ((B M), Kc + Kt, d)
        keys = torch.cat([repeat(context_valid, "b k -> (b m) k", m=m),
                          rearrange(target_valid, "b m k -> (b m) k")], dim=1)  # ((B M), Kc + Kt)
        for block in self.blocks:
            x, _ = block(x, mask=keys[:, None, None, :], return_attention=explicit_attention)
        pred = self.proj(self.norm(x[:, -kt:]))  # ((B M), Kt, D)
        return rearrange(pred, "(b m) k d -> b m k d", m=m)


# --------------------------------------------------------------------------- hierarchy


def pool_along_axis(x: Tensor, valid: Tensor, axis: int, factor: int) -> tuple[Tensor, Tensor]:
    """Average windows of ``factor`` consecutive tokens along grid ``axis``, inside one row.

    ``x``: [N, t, h, w, D] on the full grid, ``valid``: [N, t, h, w] bool. A window holds
    the tokens ``factor * j .. factor * (j + 1) - 1`` along ``axis`` with the other two
    grid coordinates fixed (so never two rows). It is valid only when all its slots are
    valid; a valid window is the mean of its tokens, an invalid one is zero (so values in
    invalid slots never leave this function). Returns ([N, ..., D] with ``axis`` shortened
    by ``factor``, validity [N, ...]).
    """
    if factor == 1:
        return x * valid[..., None], valid
    windows = x.unflatten(axis + 1, (x.shape[axis + 1] // factor, factor))  # (N, .., n/f, f, .., D)
    slots = valid.unflatten(axis + 1, (valid.shape[axis + 1] // factor, factor))  # (N, .., n/f, f, ..)
    pooled_valid = slots.all(dim=axis + 2)  # (N, .., n/f, ..)
    pooled = (windows * slots[..., None]).mean(dim=axis + 2)  # (N, .., n/f, .., D)
    return pooled * pooled_valid[..., None], pooled_valid


class LevelProjection(nn.Module):
    """The hierarchy's levels: level 0 is the identity; level l >= 1 average-pools
    ``2**l`` tokens along ``pool_axis`` (:func:`pool_along_axis`) and applies its own
    linear projection. The one module that predictions and targets both go through.

    Args:
        dim: token width.
        levels: L, number of levels.
        pool_axis: grid axis to pool along.
    """

    def __init__(self, *, dim: int, levels: int, pool_axis: int) -> None:
        super().__init__()
        self.pool_axis = pool_axis
        self.proj = nn.ModuleList(nn.Linear(dim, dim) for _ in range(levels - 1))  # levels 1 .. L-1

    def forward(self, grid: Tensor, valid: Tensor) -> list[tuple[Tensor, Tensor]]:
        """``grid``: [N, t, h, w, D], ``valid``: [N, t, h, w] -> per level (features
        [N, t_l, h_l, w_l, D] zero outside valid windows, validity [N, t_l, h_l, w_l])."""
        out = [pool_along_axis(grid, valid, self.pool_axis, 1)]
        for level, proj in enumerate(self.proj, start=1):
            pooled, pooled_valid = pool_along_axis(grid, valid, self.pool_axis, 2 ** level)
            out.append((proj(pooled) * pooled_valid[..., None], pooled_valid))
        return out


def _rows(x: Tensor, axis: int) -> Tensor:
    """[N, t, h, w, C] -> [R, C, L]: every grid row along ``axis`` as a 1-D signal."""
    moved = x.movedim(axis + 1, -2)  # (N, a, b, L, C): the other two axes first
    return moved.reshape(-1, *moved.shape[-2:]).transpose(1, 2)  # (R, C, L)


def _unrows(rows: Tensor, like: Tensor, axis: int) -> Tensor:
    """Inverse of :func:`_rows`: [R, C, L] -> [N, t, h, w, C] laid out as ``like``'s grid
    (``like``: [N, t, h, w, *] with ``axis`` of length L)."""
    shape = list(like.shape[:4])
    shape[axis + 1] = rows.shape[-1]
    moved = [s for i, s in enumerate(shape) if i != axis + 1] + [shape[axis + 1]]  # (N, a, b, L)
    return rows.transpose(1, 2).reshape(*moved, rows.shape[1]).movedim(-2, axis + 1)  # (N, t, h, w, C)


def upsample_masked(x: Tensor, valid: Tensor, axis: int, size: int) -> Tensor:
    """Linear interpolation (``align_corners=False``) of ``x`` [N, t, h, w, C] along
    ``axis`` to ``size``, normalised by the interpolated validity: a fine position takes
    the weighted mean of its valid coarse neighbours in the same row, 0 if it has none."""
    num = F.interpolate(_rows(x * valid[..., None], axis), size=size, mode="linear", align_corners=False)  # (R, C, S)
    den = F.interpolate(_rows(valid[..., None].to(x.dtype), axis), size=size, mode="linear",
                        align_corners=False)  # (R, 1, S)
    up = torch.where(den > 0, num / den.clamp_min(1e-12), torch.zeros_like(num))  # (R, C, S)
    target = list(x.shape[:4])
    target[axis + 1] = size
    return _unrows(up, x.new_empty(*target, 0), axis)  # (N, .., size, .., C)


class FPN(nn.Module):
    """Feature pyramid over the levels: lateral linear projections to ``dim``, a top-down
    path from the coarsest level (masked linear upsampling along ``pool_axis``), fusion by
    ``add`` or ``concat`` + linear, and a smoothing Conv1d (kernel 3 along ``pool_axis``,
    zero at invalid slots) per level, as torchvision's FPN (the top-down path carries the
    unsmoothed sum).

    Args:
        in_dim: width of the level features.
        dim: FPN width.
        levels: L.
        fusion: ``add`` or ``concat``.
        pool_axis: grid axis of the hierarchy.
    """

    def __init__(self, *, in_dim: int, dim: int, levels: int, fusion: Literal["add", "concat"],
                 pool_axis: int) -> None:
        super().__init__()
        self.pool_axis = pool_axis
        self.lateral = nn.ModuleList(nn.Linear(in_dim, dim) for _ in range(levels))
        self.fuse = (nn.ModuleList(nn.Linear(2 * dim, dim) for _ in range(levels - 1))  # levels 0 .. L-2
                     if fusion == "concat" else None)
        self.smooth = nn.ModuleList(nn.Conv1d(dim, dim, kernel_size=3, padding=1) for _ in range(levels))

    def smoothed(self, x: Tensor, valid: Tensor, level: int) -> Tensor:
        """Smoothing of level ``level`` along the pool axis: [N, t, h, w, C] -> same."""
        rows = self.smooth[level](_rows(x * valid[..., None], self.pool_axis))  # (R, C, L)
        return _unrows(rows, x, self.pool_axis) * valid[..., None]

    def forward(self, levels: list[tuple[Tensor, Tensor]]) -> list[tuple[Tensor, Tensor]]:
        """Per level (features [N, t_l, h_l, w_l, in_dim], validity) -> the same with ``dim``."""
        top = len(levels) - 1
        inner, inner_valid = levels[top][0], levels[top][1]
        inner = self.lateral[top](inner) * inner_valid[..., None]  # (N, .., coarsest, .., dim)
        out = [(self.smoothed(inner, inner_valid, top), inner_valid)]
        for level in range(top - 1, -1, -1):
            x, valid = levels[level]
            lateral = self.lateral[level](x)  # (N, t_l, h_l, w_l, dim)
            down = upsample_masked(inner, inner_valid, self.pool_axis, x.shape[self.pool_axis + 1])  # same shape
            merged = lateral + down if self.fuse is None else self.fuse[level](torch.cat([lateral, down], dim=-1))
            inner, inner_valid = merged * valid[..., None], valid
            out.insert(0, (self.smoothed(inner, valid, level), valid))
        return out


# --------------------------------------------------------------------------- the model


@dataclass
class HJEPAOutput:
    """One forward pass: the total loss, per-level losses [L], valid windows per level
    [L] (over the batch), the masks, the layer-normalised targets [B, N, D] and the
    VICReg variance and covariance terms (unweighted; in the loss with their weights)."""

    loss: Tensor
    level_losses: Tensor
    level_windows: Tensor
    masks: BlockMasks
    targets: Tensor
    variance: Tensor
    covariance: Tensor


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` without gradients, in eval mode (an EMA target)."""
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target.eval()


def center_per_position(targets: Tensor) -> Tensor:
    """``targets`` [B, N, D] minus their batch mean at each grid position: what the
    input adds to a token beyond what its position alone predicts."""
    return targets - targets.mean(dim=0, keepdim=True)


def position_centred(tokens: Tensor, ids: Tensor, valid: Tensor, num_tokens: int) -> Tensor:
    """Encoded tokens [B, K, D] at grid ``ids`` [B, K] (``valid`` [B, K]) minus the batch
    mean of their grid position: [S, D] for the S valid tokens whose position at least
    two samples share (a position seen once has no spread to measure)."""
    b, _, d = tokens.shape
    kept = tokens * valid[..., None]
    sums = kept.new_zeros(b, num_tokens, d).scatter_add(1, ids[..., None].expand_as(kept), kept).sum(dim=0)  # (N, D)
    counts = torch.zeros(b, num_tokens, device=tokens.device).scatter_add(1, ids, valid.float()).sum(dim=0)  # (N,)
    means = sums / counts.clamp_min(1.0)[:, None]  # (N, D)
    shared = valid & (counts[ids] > 1)  # (B, K)
    return (tokens - means[ids])[shared]  # (S, D)


def vicreg_terms(z: Tensor) -> tuple[Tensor, Tensor]:
    """VICReg's variance hinge ``mean_d relu(1 - sqrt(var_d + 1e-4))`` and covariance term
    ``sum_{i != j} cov_ij**2 / D`` of centred samples ``z`` [S, D] (zero below 2 samples)."""
    if z.shape[0] < 2:
        return z.new_zeros(()), z.new_zeros(())
    z = z.float()
    var = z.pow(2).sum(dim=0) / (z.shape[0] - 1)  # (D,): already centred per position
    cov = z.T @ z / (z.shape[0] - 1)  # (D, D)
    off = cov - torch.diag(torch.diagonal(cov))
    return F.relu(1.0 - torch.sqrt(var + 1e-4)).mean(), off.pow(2).sum() / z.shape[1]


def batch_std(features: Tensor) -> Tensor:
    """Collapse monitor: std over the batch of each (token, dim) of ``features`` [B, N, D],
    averaged. Near 0 when the embedding no longer depends on the input (position
    embeddings alone do not count, as positions are compared with themselves)."""
    return features.float().std(dim=0).mean()


class HJEPA(TrainableModel):
    """H-JEPA: masks -> context encoder -> predictor -> hierarchy (+ FPN) -> loss against
    the EMA target encoder. The config is passed whole and positionally, as the model
    registry builds every family with ``cls(config)``.

    Args:
        config: the architecture, masking, hierarchy and EMA settings.
    """

    def __init__(self, config: HJEPAConfig) -> None:
        super().__init__()
        self.config = c = config
        self.mask_sampler = MultiBlockMaskSampler(grid=c.token_grid, num_targets=c.num_target_blocks,
                                                  target_scale=c.target_scale,
                                                  target_aspect_ratio=c.target_aspect_ratio,
                                                  context_scale=c.context_scale)
        self.encoder = ViTEncoder(config=c)
        self.predictor = Predictor(config=c)
        self.levels = LevelProjection(dim=c.embed_dim, levels=c.levels, pool_axis=c.pool_axis)
        self.fpn = (FPN(in_dim=c.embed_dim, dim=c.fpn.dim, levels=c.levels, fusion=c.fpn.fusion, pool_axis=c.pool_axis)
                    if c.fpn is not None else None)
        self.initialize_weights()
        self.target_encoder = frozen_copy(self.encoder)  # starts equal to the context encoder
        self.target_levels = frozen_copy(self.levels) if c.target_heads == "ema" else None
        self.target_fpn = frozen_copy(self.fpn) if c.target_heads == "ema" and self.fpn is not None else None
        self.register_buffer("level_weights", torch.tensor(c.level_weights), persistent=False)

    def initialize_weights(self) -> None:
        """I-JEPA's init: truncated normal (std 0.02) for linear, conv and mask-token
        weights, zero biases, unit LayerNorms; each block's output projections are
        rescaled by 1 / sqrt(2 * layer) (``fix_init_weight``). The patch embedding is
        Xavier-initialised as a linear layer on the flattened patch (MAE's choice): with
        std 0.02 a small patch (pose: 2 x 24 values) gives token contents far below the
        unit-size sin-cos positions, and the targets would be almost pure position."""
        nn.init.trunc_normal_(self.predictor.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv3d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.encoder.patch_embed.proj.weight  # MAE's patch init: Xavier on the flattened patch, so a
        nn.init.xavier_uniform_(w.data.view(w.shape[0], -1))  # small patch's content is not drowned by positions
        for blocks in (self.encoder.blocks, self.predictor.blocks):
            for layer, block in enumerate(blocks, start=1):
                block.attn.proj.weight.data.div_(math.sqrt(2.0 * layer))
                block.mlp.fc2.weight.data.div_(math.sqrt(2.0 * layer))

    # ------------------------------------------------------------------ training interface

    def train(self, mode: bool = True) -> HJEPA:
        """Train/eval mode for everything but the target encoder, which stays in eval."""
        super().train(mode)
        for target in self.ema_targets():
            target.eval()
        return self

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(EMA target, online module) pairs: the target encoder, and with ``target_heads:
        ema`` the target level projections and FPN."""
        pairs: list[tuple[nn.Module, nn.Module]] = [(self.target_encoder, self.encoder)]
        if self.target_levels is not None:
            pairs.append((self.target_levels, self.levels))
        if self.target_fpn is not None and self.fpn is not None:
            pairs.append((self.target_fpn, self.fpn))
        return pairs

    def ema_targets(self) -> list[nn.Module]:
        return [target for target, _ in self.ema_pairs()]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Every parameter except the EMA targets' (updated only by the EMA)."""
        frozen = {id(p) for target in self.ema_targets() for p in target.parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in frozen]

    def momentum(self, step: int, total_steps: int) -> float:
        """EMA momentum after the 0-based optimizer step ``step``: ``ema_momentum[0]`` at
        step 0, moving to ``ema_momentum[1]`` over ``total_steps`` (as I-JEPA's
        ``start + step * (end - start) / total``), linearly or along a half cosine."""
        start, end = self.config.ema_momentum
        progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
        if self.config.ema_schedule == "cosine":
            progress = (1.0 - math.cos(math.pi * progress)) / 2.0
        return start + (end - start) * progress

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """EMA of the target encoder, after the optimizer step:
        ``theta_t <- m * theta_t + (1 - m) * theta_c``."""
        m = self.momentum(step, total_steps)
        for target_module, online_module in self.ema_pairs():
            for target, online in zip(target_module.parameters(), online_module.parameters()):
                target.mul_(m).add_(online.detach(), alpha=1.0 - m)

    # ------------------------------------------------------------------ named steps

    def sample_masks(self, batch_size: int, generator: torch.Generator | None = None) -> BlockMasks:
        """Multi-block masks from ``generator`` or, when None, the global torch RNG (CPU)."""
        return self.mask_sampler(batch_size, generator)

    @torch.no_grad()
    def forward_target(self, x: Tensor, explicit_attention: bool = False) -> Tensor:
        """Targets of every token: the target encoder on the full input, layer-normalised
        (no affine), [B, N, D]."""
        out = self.target_encoder(x, explicit_attention=explicit_attention)
        return F.layer_norm(out, out.shape[-1:])

    def scatter_to_grid(self, pred: Tensor, ids: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """Put predictions back into the full token grid, one grid per (sample, block).

        ``pred``: [B, M, K, D] at ``ids`` [B, M, K] (``valid`` False = padding) ->
        (grid [B*M, t, h, w, D], zero where nothing was predicted; validity [B*M, t, h, w]).
        Padded slots add zero and are not marked valid.
        """
        t, h, w = self.config.token_grid
        flat_pred = rearrange(pred * valid[..., None], "b m k d -> (b m) k d")  # padding zeroed
        flat_ids = rearrange(ids, "b m k -> (b m) k")
        grid = flat_pred.new_zeros(flat_pred.shape[0], t * h * w, flat_pred.shape[-1])  # ((B M), N, D)
        grid = grid.scatter_add(1, flat_ids[..., None].expand_as(flat_pred), flat_pred)
        hits = torch.zeros(grid.shape[:2], dtype=torch.long, device=grid.device)  # ((B M), N)
        grid_valid = hits.scatter_add(1, flat_ids, rearrange(valid, "b m k -> (b m) k").long()) > 0
        return (rearrange(grid, "n (t h w) d -> n t h w d", t=t, h=h, w=w),
                rearrange(grid_valid, "n (t h w) -> n t h w", t=t, h=h, w=w))

    def hierarchy(self, grid: Tensor, valid: Tensor, online: bool = False) -> list[tuple[Tensor, Tensor]]:
        """The level features of a full grid [N, t, h, w, D] with validity [N, t, h, w]:
        :class:`LevelProjection`, then the :class:`FPN` if configured. ``online``: the
        predictions' modules; else the targets' (the same ones unless ``target_heads: ema``),
        which also give the level embeddings."""
        if not online and self.config.target_heads == "none":
            return [pool_along_axis(grid, valid, self.config.pool_axis, 2 ** level) for level in range(self.config.levels)]
        use_ema = not online and self.target_levels is not None
        level_module = self.target_levels if use_ema else self.levels
        fpn = self.target_fpn if use_ema else self.fpn
        levels = level_module(grid, valid)
        return fpn(levels) if fpn is not None else levels

    def regression(self, pred: Tensor, target: Tensor) -> Tensor:
        """Element-wise regression loss (smooth L1 with beta 1, or squared error)."""
        if self.config.loss == "smooth_l1":
            return F.smooth_l1_loss(pred, target, reduction="none")
        return F.mse_loss(pred, target, reduction="none")

    def forward_loss(self, pred_grid: Tensor, target_grid: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Weighted sum over levels of the regression loss between layer-normalised
        predicted and target level features, each level averaged over its valid windows.

        ``pred_grid``, ``target_grid``: [N, t, h, w, D]; ``valid``: [N, t, h, w]. Both go
        through the same :meth:`hierarchy`; the target side carries no gradient. Returns
        (loss, per-level losses [L], valid windows per level [L]).
        """
        pred_levels = self.hierarchy(pred_grid, valid, online=True)
        with torch.no_grad():
            target_levels = self.hierarchy(target_grid, valid)
        losses, windows = [], []
        for (p, v), (t, _) in zip(pred_levels, target_levels):
            err = self.regression(F.layer_norm(p, p.shape[-1:]), F.layer_norm(t, t.shape[-1:])).mean(dim=-1)
            count = v.sum()  # valid windows of this level
            losses.append((err * v).sum() / count.clamp_min(1))  # a level without windows adds 0
            windows.append(count)
        level_losses = torch.stack(losses)  # (L,)
        return (level_losses * self.level_weights).sum(), level_losses, torch.stack(windows)

    def forward(self, x: Tensor, masks: BlockMasks | None = None, explicit_attention: bool = False) -> HJEPAOutput:
        """``x``: [B, C, T, H, W] -> :class:`HJEPAOutput`. ``masks`` default to
        :meth:`sample_masks` from the global RNG; ``explicit_attention`` runs the explicit
        softmax attention path instead of the fused kernel (same result)."""
        b = x.shape[0]
        if masks is None:
            masks = self.sample_masks(b)
        masks = masks.to(x.device)
        m = masks.targets.shape[1]
        context_ids, context_valid = mask_to_ids(masks.context)  # (B, Kc)
        target_ids, target_valid = mask_to_ids(masks.targets)  # (B, M, Kt)
        targets = self.forward_target(x, explicit_attention)  # (B, N, D)
        loss_targets = center_per_position(targets) if self.config.target_centering else targets
        context = self.encoder(x, context_ids, context_valid, explicit_attention)  # (B, Kc, D)
        pred = self.predictor(context, context_ids, context_valid, target_ids, target_valid,
                              explicit_attention)  # (B, M, Kt, D)
        pred_grid, valid = self.scatter_to_grid(pred, target_ids, target_valid)  # ((B M), t, h, w, D)
        target_grid = rearrange(repeat(loss_targets, "b n d -> (b m) n d", m=m), "n (t h w) d -> n t h w d",
                                t=pred_grid.shape[1], h=pred_grid.shape[2], w=pred_grid.shape[3])
        loss, level_losses, level_windows = self.forward_loss(pred_grid, target_grid, valid)
        variance, covariance = vicreg_terms(position_centred(context, context_ids, context_valid,
                                                             self.config.num_tokens))
        loss = loss + self.config.variance_weight * variance + self.config.covariance_weight * covariance
        return HJEPAOutput(loss, level_losses, level_windows, masks, targets, variance, covariance)

    @torch.no_grad()
    def embedding_std(self, x: Tensor) -> float:
        """Collapse monitor on ``x`` [B, C, T, H, W]: :func:`batch_std` of the targets."""
        return float(batch_std(self.forward_target(x)))

    def step_inputs(self, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        """The global batch's multi-block masks (:meth:`sample_masks`): ``context_mask``
        [B, N] and ``target_masks`` [B, M, N]. Block sizes are shared by the whole global
        batch (as I-JEPA's collator shares them across ranks), positions are per sample."""
        masks = self.sample_masks(batch_size, generator)
        return {"context_mask": masks.context, "target_masks": masks.targets}

    def training_step(self, batch: dict[str, Tensor]) -> StepOutput:
        """``batch["x"]``: [B, C, T, H, W] float; masks from ``context_mask`` / ``target_masks``
        if given (the loop's :meth:`step_inputs`), else from the global RNG."""
        masks = None
        if "context_mask" in batch:
            masks = BlockMasks(context=batch["context_mask"], targets=batch["target_masks"])
        out = self(batch["x"], masks)
        metrics = {"loss": out.loss.item(), "target_std": float(batch_std(out.targets)),
                   "variance_term": out.variance.item(), "covariance_term": out.covariance.item(),
                   "context_tokens": out.masks.context.sum(dim=1).float().mean().item()}
        for level, (loss, windows) in enumerate(zip(out.level_losses.tolist(), out.level_windows.tolist())):
            metrics[f"loss_level{level}"] = loss
            metrics[f"windows_level{level}"] = float(windows)
        return StepOutput(out.loss, metrics)
