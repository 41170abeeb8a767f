"""Hierarchical transformer VAE for long pose sequences (docs/design.md §4.3).

Method, top to bottom (one class per step):

1. **Frame embedding** (:class:`FrameEmbedding`). A frame ``x_t`` [F] and its keypoint
   validity ``v_t`` [F] become ``Linear([x_t * v_t, v_t])`` plus a fixed sine/cosine
   encoding of the frame's position *inside its chunk*. Missing keypoints are zeroed and
   flagged, so their (interpolated) values never reach the model: changing them changes
   neither the output nor the loss.
2. **Chunking.** The sequence is padded with masked frames to ``N = ceil(T / L)`` chunks
   of ``L = chunk_len`` frames (never truncated); ``"b (n l) d -> (b n) l d"``.
3. **Local transformer** (:class:`ChunkEncoder`): pre-norm blocks over the frames of one
   chunk at a time, so attention never spans two chunks and its cost is
   ``N * L^2 = T * L``: linear in ``T`` for a fixed chunk length.
4. **Chunk summary** (:class:`ChunkPooling`): ``mean`` averages the chunk's real frames;
   ``query`` prepends a learned summary token to every chunk before the local transformer
   and reads it out afterwards (ACTOR / TEMOS's distribution tokens, per chunk, with one
   token and dense heads instead of separate mu and sigma tokens). Then ``Linear`` to the
   global width.
5. **Global transformer** (:class:`GlobalEncoder`) over the ``N`` chunk summaries, with a
   sine/cosine encoding of the chunk index. ``N = T / L`` is small (160 for 8,000 frames
   at ``L = 50``), so its quadratic cost is negligible.
6. **Posterior heads** (:class:`PosteriorHeads`): dense ``mu`` and ``log sigma^2`` per
   chunk. *Latent structure*: one Gaussian latent ``z_n`` [latent_dim] per chunk,
   ``q(z | x) = prod_n N(mu_n, diag sigma_n^2)``, prior ``N(0, I)`` per chunk, so the
   latent grows with the sequence (memory stays linear in ``T``) and a latent can be
   decoded to any number of chunks. Reparameterisation: ``z = mu + sigma * eps``.
7. **Decoder**, mirrored: :class:`GlobalDecoder` (``Linear`` latent -> per-chunk
   conditioning at the global width, chunk-index encoding, global blocks), then
   :class:`ChunkDecoder` (each chunk's conditioning broadcast to its ``L`` frames plus the
   frame-in-chunk encoding, local blocks inside the chunk, ``Linear`` -> pose [F]).
   The decoder sees nothing of ``x`` but ``z``, so all information passes the bottleneck.
8. **Linear chunk path** (``linear_chunk_path``, optional): ``mu_n += Linear(chunk n's
   [x * valid, valid], flattened)`` and ``pose of chunk n += Linear(z_n)`` (reshaped to its
   L frames), beside the transformers and still through the same latent. Keypoints of a
   rigid-ish body are linear in its centre and (cos, sin) of its heading, so this PCA-like
   path carries position and within-chunk motion in a form that generalises to positions
   not seen in training (measurements: bench/RESULTS.md, "Pose VAE").
9. **Output parametrisation** (``output``): ``keypoints`` decodes the F features
   directly; ``body`` (:class:`BodyOutput`) decodes per frame and agent a centre, a heading
   and body-frame offsets added to a learned body template, and places the template's
   keypoints by rotation and translation, so any latent (a prior sample included) decodes
   to a body of plausible shape, and position and heading are numbers of their own.
10. **Chunk overlap** (``chunk_overlap = h``): each chunk's decoder also predicts the
    ``h`` frames on either side of its chunk; :func:`overlap_add` cross-fades neighbours
    over those ``2h`` frames (in the parameters, before :class:`BodyOutput`), so
    reconstructions do not jump at chunk borders.

Loss (:meth:`PoseVAE.forward_loss`): mean squared error over observed keypoints of real
frames (missing keypoints and padded frames contribute nothing) plus ``beta(step) * KL``.
``KL`` is the per-chunk KL divergence to the prior (summed over latent dimensions, in
nats) averaged over real chunks; with ``free_bits`` each latent dimension's batch-mean KL
is clamped from below at that value (Kingma et al. 2016), so the optimiser gains nothing
by pushing a dimension below it. ``beta(step) = beta * min(1, step / kl_warmup_steps)``
where ``step`` is the number of optimizer steps taken, kept in the buffer
``optimizer_steps`` (saved in checkpoints, so a resumed run continues the ramp exactly)
and set by :meth:`PoseVAE.after_optimizer_step`. The metrics report both terms, the
current beta and the number of active latent units (Burda et al. 2016: a unit is active
when the variance over the batch's real chunks of its posterior mean exceeds 0.01).

Masking. A padded frame is never an attention key for a real frame; to keep every
softmax row finite a padded query may attend to itself only (its output is ignored).
Fully padded chunks (possible with ``frame_mask``) are masked the same way in the global
stages and are left out of the KL and the active-unit count. Without any padding no mask
is passed, so the fused attention kernels run unmasked.

Attention maps (explicit attention path, ``return_attention=True``) are returned per
layer: local ``[B, N, heads, S, S]`` (encoder: ``S = L``, or ``L + 1`` with the summary
token at index 0; decoder: ``S = L + 2 * chunk_overlap``) and global ``[B, heads, N, N]``; :func:`frame_attention` expands a local map to
the block-diagonal frame-level ``[B, heads, N*L, N*L]`` for temporal rollout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from strata.models.blocks import Block, sincos_1d
from strata.pose.keypoints import N_KEYPOINTS
from strata.training.interface import StepOutput, TrainableModel

LOGVAR_RANGE = (-30.0, 20.0)  # clamp of the log-variance head (exp stays finite in fp32 and bf16)
ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. 2016
TRAJECTORY_DEGREE = 3  # output "body": polynomial degree of a chunk's centre and heading tracks
INITIAL_SPREAD = 0.02  # output "body": initial bound of the body-frame offsets (feature units)


@dataclass(frozen=True)
class PoseVAEConfig:
    """Architecture and loss of the hierarchical pose VAE (``models.posevae.<run>.architecture``).

    Args:
        features: values per frame F (MABe22 mouse triplets: 3 x 12 x 2 = 72).
        chunk_len: frames per chunk L; attention of the local stages stays inside a chunk.
        local_dim: width of the frame tokens (local encoder and decoder stages).
        global_dim: width of the chunk tokens (global encoder and decoder stages).
        local_depth: transformer blocks of the local encoder.
        global_depth: transformer blocks of the global encoder.
        decoder_global_depth: transformer blocks of the global decoder.
        decoder_local_depth: transformer blocks of the local decoder.
        local_heads: attention heads of the local stages (must divide ``local_dim``).
        global_heads: attention heads of the global stages (must divide ``global_dim``).
        mlp_ratio: hidden width of every block's MLP as a multiple of its width.
        dropout: dropout on attention probabilities (training only).
        latent_dim: size of the Gaussian latent of one chunk.
        pooling: chunk summary: ``mean`` of the chunk's real frames, or a learned ``query``
            token per chunk read out after the local encoder.
        beta: weight of the KL term after warm-up.
        kl_warmup_steps: optimizer steps over which the KL weight ramps linearly from 0 to
            ``beta`` (0: ``beta`` from the first step).
        free_bits: minimum KL in nats per latent dimension (batch mean per chunk) below
            which the KL term gives no gradient; ``None`` disables free bits.
        linear_chunk_path: add a linear path beside the transformers: ``Linear`` of a
            chunk's frames (``[x * valid, valid]`` flattened) added to its posterior mean,
            and ``Linear`` of a chunk's latent to its frames added to the decoded poses.
        output: what the decoder's last layer predicts per frame: ``keypoints`` (the F
            features directly) or ``body`` (per agent a centre, a heading vector and
            body-frame offsets added to a learned body template; :class:`BodyOutput`).
        chunk_overlap: frames ``h`` each chunk's decoder also predicts on either side of
            its chunk; neighbouring chunks' predictions are cross-faded there (0: none).
    """

    features: int
    chunk_len: int
    local_dim: int
    global_dim: int
    local_depth: int
    global_depth: int
    decoder_global_depth: int
    decoder_local_depth: int
    local_heads: int
    global_heads: int
    mlp_ratio: float
    dropout: float
    latent_dim: int
    pooling: Literal["mean", "query"]
    beta: float
    kl_warmup_steps: int
    free_bits: float | None
    linear_chunk_path: bool = False
    output: Literal["keypoints", "body"] = "keypoints"
    chunk_overlap: int = 0


def check_config(config: PoseVAEConfig) -> None:
    """Raise ``ValueError`` naming the field of every invalid value or combination."""
    for name in ("features", "chunk_len", "local_dim", "global_dim", "local_depth", "global_depth",
                 "decoder_global_depth", "decoder_local_depth", "local_heads", "global_heads",
                 "latent_dim"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be a positive integer, got {getattr(config, name)}")
    for dim, heads in (("local_dim", "local_heads"), ("global_dim", "global_heads")):
        width, n_heads = getattr(config, dim), getattr(config, heads)
        if width % n_heads:
            raise ValueError(f"{dim} {width} is not divisible by {heads} {n_heads}")
        if width % 2:
            raise ValueError(f"{dim} must be even for the sine/cosine position encoding, got {width}")
    if config.pooling not in ("mean", "query"):
        raise ValueError(f"pooling must be 'mean' or 'query', got {config.pooling!r}")
    if config.mlp_ratio <= 0:
        raise ValueError(f"mlp_ratio must be positive, got {config.mlp_ratio}")
    if not 0.0 <= config.dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {config.dropout}")
    if config.beta < 0:
        raise ValueError(f"beta must be >= 0, got {config.beta}")
    if config.kl_warmup_steps < 0:
        raise ValueError(f"kl_warmup_steps must be >= 0, got {config.kl_warmup_steps}")
    if config.free_bits is not None and config.free_bits <= 0:
        raise ValueError(f"free_bits must be positive or None (disabled), got {config.free_bits}")
    if config.output not in ("keypoints", "body"):
        raise ValueError(f"output must be 'keypoints' or 'body', got {config.output!r}")
    if config.output == "body" and config.features % (2 * N_KEYPOINTS):
        raise ValueError(f"output 'body' needs features = agents x {N_KEYPOINTS} keypoints x 2, "
                         f"got features {config.features}")
    if not 0 <= config.chunk_overlap <= config.chunk_len:
        raise ValueError(f"chunk_overlap must be in [0, chunk_len = {config.chunk_len}], got {config.chunk_overlap}")


# --------------------------------------------------------------------------- outputs


@dataclass
class AttentionMaps:
    """Attention probabilities per layer (explicit path); empty lists for a stage not run.

    ``*_local``: ``[B, N, heads, S, S]`` per layer (``S = chunk_len``, or ``chunk_len + 1``
    in the encoder with ``pooling="query"``: the summary token is index 0).
    ``*_global``: ``[B, heads, N, N]`` per layer. Rows of padded queries attend to themselves.
    """

    encoder_local: list[Tensor]
    encoder_global: list[Tensor]
    decoder_global: list[Tensor]
    decoder_local: list[Tensor]


@dataclass
class Posterior:
    """``q(z | x)``: ``mu``, ``logvar`` [B, N, latent_dim]; ``chunk_mask`` [B, N] (True: the
    chunk holds a real frame); ``frame_mask`` [B, N*L] (True: real frame, False: padding);
    ``num_frames`` T of the input; the encoder's attention maps when asked."""

    mu: Tensor
    logvar: Tensor
    chunk_mask: Tensor
    frame_mask: Tensor
    num_frames: int
    local_attention: list[Tensor]
    global_attention: list[Tensor]


@dataclass
class Decoded:
    """Decoded poses [B, T, F], the latents [B, N, latent_dim] they came from, and the
    attention maps when asked (encoder lists empty unless an input was encoded)."""

    pose: Tensor
    z: Tensor
    attention: AttentionMaps | None


@dataclass
class PoseVAEOutput:
    """One pass: ``recon`` [B, T, F], the posterior, the latent ``z`` [B, N, latent_dim] that
    was decoded (a sample, or ``mu``), and the attention maps when asked."""

    recon: Tensor
    posterior: Posterior
    z: Tensor
    attention: AttentionMaps | None


# --------------------------------------------------------------------------- helpers


def chunk_count(num_frames: int, chunk_len: int) -> int:
    """Chunks needed for ``num_frames`` frames (the last one padded, never dropped)."""
    return math.ceil(num_frames / chunk_len)


def attention_mask(real: Tensor | None) -> Tensor | None:
    """Boolean attention mask [B, 1, S, S] from real-token flags [B, S] (None: no padding).

    A query may attend to every real key; a padded query attends to itself only, so no
    softmax row is empty (its output is never used).
    """
    if real is None or bool(real.all()):
        return None
    eye = torch.eye(real.shape[-1], dtype=torch.bool, device=real.device)
    return (real[:, None, None, :] | eye)  # (B, 1, S, S)


def frame_attention(local: Tensor, chunk_len: int) -> Tensor:
    """Block-diagonal frame-level attention [B, heads, N*L, N*L] from a local map
    [B, N, heads, S, S] (a summary token at index 0, when present, is dropped: the last
    ``chunk_len`` positions are the frames). Entries between chunks are zero, as the local
    stages never attend across chunks."""
    frames = local[..., -chunk_len:, -chunk_len:]  # (B, N, h, L, L)
    eye = torch.eye(frames.shape[1], dtype=frames.dtype, device=frames.device)  # (N, N)
    blocks = torch.einsum("bnhij,nm->bhnimj", frames, eye)  # (B, h, N, L, N, L), zero off the diagonal
    return rearrange(blocks, "b h n i m j -> b h (n i) (m j)")


class TransformerStack(nn.Module):
    """``depth`` pre-norm blocks (:class:`strata.models.blocks.Block`) and a final LayerNorm.

    Args:
        dim: token width.
        depth: number of blocks.
        heads: attention heads.
        mlp_ratio: MLP hidden width / ``dim``.
        dropout: dropout on attention probabilities.
    """

    def __init__(self, *, dim: int, depth: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim=dim, heads=heads, mlp_ratio=mlp_ratio, dropout=dropout)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: Tensor, real: Tensor | None, return_attention: bool) -> tuple[Tensor, list[Tensor]]:
        """``x`` [B, S, D]; ``real`` [B, S] (True: real token) or None. Returns [B, S, D] and
        the per-layer probabilities [B, heads, S, S] (empty list on the fused path)."""
        mask = attention_mask(real)
        maps = []
        for block in self.blocks:
            x, attn = block(x, mask=mask, return_attention=return_attention)
            if attn is not None:
                maps.append(attn)
        return self.norm(x), maps


# --------------------------------------------------------------------------- encoder


class FrameEmbedding(nn.Module):
    """Frame tokens: ``Linear([x * valid, valid]) + sincos(position in chunk)``.

    Args:
        features: values per frame F.
        dim: token width.
        chunk_len: frames per chunk (positions are counted inside a chunk).
    """

    def __init__(self, *, features: int, dim: int, chunk_len: int) -> None:
        super().__init__()
        self.chunk_len = chunk_len
        self.proj = nn.Linear(2 * features, dim)
        self.register_buffer("position", sincos_1d(torch.arange(chunk_len), dim), persistent=False)  # (L, D)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        """``x`` [B, N*L, F] float, ``valid`` [B, N*L, F] bool -> tokens [B, N*L, D]."""
        v = valid.to(x.dtype)
        tokens = self.proj(torch.cat([x * v, v], dim=-1))  # (B, N*L, D)
        n = tokens.shape[1] // self.chunk_len
        return tokens + repeat(self.position, "l d -> (n l) d", n=n)


class ChunkPooling(nn.Module):
    """Chunk summary: masked mean of the frames, or a learned summary token per chunk.

    With ``mode="query"`` :meth:`prepend` adds the token before the local encoder and
    :meth:`forward` reads it out; with ``mean`` :meth:`prepend` is the identity.

    Args:
        mode: ``mean`` or ``query``.
        local_dim: width of the frame tokens.
        global_dim: width of the summary.
    """

    def __init__(self, *, mode: Literal["mean", "query"], local_dim: int, global_dim: int) -> None:
        super().__init__()
        if mode not in ("mean", "query"):
            raise ValueError(f"pooling mode must be 'mean' or 'query', got {mode!r}")
        self.mode = mode
        self.query = nn.Parameter(torch.zeros(1, 1, local_dim)) if mode == "query" else None
        self.proj = nn.Linear(local_dim, global_dim)

    def prepend(self, frames: Tensor, real: Tensor) -> tuple[Tensor, Tensor]:
        """``frames`` [B*N, L, D], ``real`` [B*N, L] -> tokens [B*N, S, D] and flags [B*N, S]."""
        if self.query is None:
            return frames, real
        token = self.query.expand(frames.shape[0], -1, -1)  # (B*N, 1, D)
        flag = real.new_ones(real.shape[0], 1)
        return torch.cat([token, frames], dim=1), torch.cat([flag, real], dim=1)  # (B*N, 1+L, ·)

    def forward(self, tokens: Tensor, real: Tensor) -> Tensor:
        """Encoded ``tokens`` [B*N, S, D] and flags [B*N, S] -> summaries [B*N, global_dim]."""
        if self.query is not None:
            summary = tokens[:, 0]  # (B*N, D): the summary token
        else:
            w = real.to(tokens.dtype)[..., None]  # (B*N, L, 1)
            summary = (tokens * w).sum(1) / w.sum(1).clamp_min(1.0)  # (B*N, D); 0 for an all-padded chunk
        return self.proj(summary)


class ChunkEncoder(nn.Module):
    """Local transformer: blocks over the tokens of one chunk at a time [B*N, S, D].

    Args:
        dim, depth, heads, mlp_ratio, dropout: as :class:`TransformerStack`.
    """

    def __init__(self, *, dim: int, depth: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.stack = TransformerStack(dim=dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio, dropout=dropout)

    def forward(self, tokens: Tensor, real: Tensor | None, return_attention: bool) -> tuple[Tensor, list[Tensor]]:
        return self.stack(tokens, real, return_attention)


class GlobalEncoder(nn.Module):
    """Global transformer over chunk summaries [B, N, D] with a chunk-index encoding.

    Args:
        dim, depth, heads, mlp_ratio, dropout: as :class:`TransformerStack`.
    """

    def __init__(self, *, dim: int, depth: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.dim = dim
        self.stack = TransformerStack(dim=dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio, dropout=dropout)

    def forward(self, summaries: Tensor, real: Tensor | None, return_attention: bool) -> tuple[Tensor, list[Tensor]]:
        position = sincos_1d(torch.arange(summaries.shape[1], device=summaries.device), self.dim)  # (N, D)
        return self.stack(summaries + position.to(summaries.dtype), real, return_attention)


class PosteriorHeads(nn.Module):
    """Dense heads: chunk token [.., dim] -> ``mu``, ``logvar`` [.., latent_dim] (clamped
    to ``LOGVAR_RANGE``).

    Args:
        dim: width of the chunk tokens.
        latent_dim: size of the latent of one chunk.
    """

    def __init__(self, *, dim: int, latent_dim: int) -> None:
        super().__init__()
        self.mu = nn.Linear(dim, latent_dim)
        self.logvar = nn.Linear(dim, latent_dim)

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        return self.mu(tokens), self.logvar(tokens).clamp(*LOGVAR_RANGE)


# --------------------------------------------------------------------------- decoder


class GlobalDecoder(nn.Module):
    """Latent per chunk [B, N, latent_dim] -> conditioning (``Linear`` + chunk-index
    encoding) -> global blocks -> [B, N, dim].

    Args:
        latent_dim: size of the latent of one chunk.
        dim, depth, heads, mlp_ratio, dropout: as :class:`TransformerStack`.
    """

    def __init__(self, *, latent_dim: int, dim: int, depth: int, heads: int, mlp_ratio: float,
                 dropout: float) -> None:
        super().__init__()
        self.dim = dim
        self.proj = nn.Linear(latent_dim, dim)
        self.stack = TransformerStack(dim=dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio, dropout=dropout)

    def forward(self, z: Tensor, real: Tensor | None, return_attention: bool) -> tuple[Tensor, list[Tensor]]:
        position = sincos_1d(torch.arange(z.shape[1], device=z.device), self.dim)  # (N, D)
        return self.stack(self.proj(z) + position.to(z.dtype), real, return_attention)


class ChunkDecoder(nn.Module):
    """Chunk conditioning [B*N, global_dim] -> L frame queries (conditioning + position in
    chunk) -> local blocks inside the chunk -> poses [B*N, L, F].

    Args:
        global_dim: width of the chunk conditioning.
        dim: width of the frame tokens.
        chunk_len: frames decoded per chunk (the chunk and its overlap on both sides).
        features: values per frame F.
        depth, heads, mlp_ratio, dropout: of the local blocks.
    """

    def __init__(self, *, global_dim: int, dim: int, chunk_len: int, features: int, depth: int, heads: int,
                 mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.proj = nn.Linear(global_dim, dim)
        self.register_buffer("position", sincos_1d(torch.arange(chunk_len), dim), persistent=False)  # (L', D)
        self.stack = TransformerStack(dim=dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio, dropout=dropout)
        self.head = nn.Linear(dim, features)

    def forward(self, condition: Tensor, real: Tensor | None, return_attention: bool) -> tuple[Tensor, list[Tensor]]:
        queries = self.proj(condition)[:, None, :] + self.position  # (B*N, L, D)
        frames, maps = self.stack(queries, real, return_attention)
        return self.head(frames), maps  # (B*N, L, F)


class BodyOutput(nn.Module):
    """Per-frame body parameters [..., A * (4 + 2K)] -> keypoints [..., F = A * K * 2].

    For every agent: a centre ``c`` [2], a heading vector ``h`` [2] (unit after adding
    ``(1, 0)`` and normalising, so an untrained model faces +x) and body-frame offsets
    ``r = spread * tanh(raw)`` [K, 2], bounded by a learned ``spread`` per keypoint; keypoint
    ``k = c + R(h) (template_k + r_k)`` with a learned ``template`` [A, K, 2]. A body's shape
    then stays near the template whatever the latent (a prior sample included), and position
    and heading are numbers of their own. :meth:`smooth` projects each chunk's centre and
    heading tracks on polynomials of degree :data:`TRAJECTORY_DEGREE`, so they move smoothly
    within a chunk.

    Args:
        features: values per frame F = agents x K keypoints x 2.
        span: frames decoded per chunk (chunk and overlaps).
    """

    def __init__(self, features: int, span: int) -> None:
        super().__init__()
        self.agents = features // (2 * N_KEYPOINTS)
        self.params = self.agents * (4 + 2 * N_KEYPOINTS)
        self.template = nn.Parameter(torch.zeros(self.agents, N_KEYPOINTS, 2))
        self.log_spread = nn.Parameter(torch.full((self.agents, N_KEYPOINTS, 2), math.log(INITIAL_SPREAD)))
        t = torch.linspace(-1.0, 1.0, span, dtype=torch.float64)
        basis, _ = torch.linalg.qr(torch.stack([t ** d for d in range(min(TRAJECTORY_DEGREE + 1, span))], 1))
        self.register_buffer("projection", (basis @ basis.T).float(), persistent=False)  # (S, S)
        track = torch.zeros(self.agents, 4 + 2 * N_KEYPOINTS, dtype=torch.bool)
        track[:, :4] = True  # centre and heading of every agent
        self.register_buffer("track", track.reshape(-1), persistent=False)  # (P,)

    def smooth(self, chunks: Tensor) -> Tensor:
        """[B, N, S, P] per-chunk parameters with the centre and heading channels projected on
        low-order polynomials over the chunk's S frames (the offsets are left free)."""
        projected = torch.einsum("st,bntp->bnsp", self.projection.to(chunks.dtype), chunks)
        return torch.where(self.track, projected, chunks)

    def forward(self, params: Tensor) -> Tensor:
        p = params.unflatten(-1, (self.agents, 4 + 2 * N_KEYPOINTS))  # (..., A, 4 + 2K)
        centre, heading = p[..., None, 0:2], p[..., 2:4] + p.new_tensor([1.0, 0.0])
        cos, sin = (heading / heading.norm(dim=-1, keepdim=True).clamp_min(1e-4)).unbind(-1)  # (..., A)
        offsets = self.log_spread.exp() * torch.tanh(p[..., 4:].unflatten(-1, (N_KEYPOINTS, 2)))
        bx, by = (self.template + offsets).unbind(-1)  # (..., A, K) each
        x = cos[..., None] * bx - sin[..., None] * by
        y = sin[..., None] * bx + cos[..., None] * by
        return (centre + torch.stack([x, y], dim=-1)).flatten(-3)  # (..., F)


def overlap_add(chunks: Tensor, chunk_len: int, overlap: int, chunk_mask: Tensor | None = None) -> Tensor:
    """Per-chunk predictions [B, N, L + 2h, P] (chunk n spans frames nL - h .. nL + L + h)
    -> frames [B, N*L, P], cross-faded where neighbours overlap: weights ramp linearly over
    the 2h shared frames (and sum to 1 there); frames outside 0 .. N*L are dropped. Chunks
    with ``chunk_mask`` [B, N] False (all padding) contribute nothing, so a real frame
    next to padding is decoded as in the sequence alone (frames no chunk covers are 0)."""
    b, n, span, p = chunks.shape
    if overlap == 0:
        return rearrange(chunks, "b n l p -> b (n l) p")
    i = torch.arange(span, device=chunks.device)
    ramp = ((torch.minimum(i, span - 1 - i) + 0.5) / (2 * overlap)).clamp(max=1.0).to(chunks.dtype)  # (S,)
    real = chunks.new_ones(b, n) if chunk_mask is None else chunk_mask.to(chunks.dtype)
    w = real[:, :, None] * ramp  # (B, N, S)
    index = (torch.arange(n, device=chunks.device)[:, None] * chunk_len + i).reshape(-1)  # (N*S,)
    total = chunks.new_zeros(b, n * chunk_len + 2 * overlap, p)
    total.index_add_(1, index, rearrange(chunks * w[..., None], "b n s p -> b (n s) p"))
    weight = chunks.new_zeros(b, n * chunk_len + 2 * overlap).index_add_(1, index, w.reshape(b, -1))
    return (total / weight.clamp_min(1e-6)[..., None])[:, overlap:overlap + n * chunk_len]


# --------------------------------------------------------------------------- the model


class PoseVAE(TrainableModel):
    """Hierarchical transformer VAE over pose sequences (see the module docstring).

    Args:
        config: the whole architecture (:class:`PoseVAEConfig`), passed positionally as the
            model registry does.
    """

    def __init__(self, config: PoseVAEConfig) -> None:
        super().__init__()
        check_config(config)
        self.config = config
        c = config
        self.embed = FrameEmbedding(features=c.features, dim=c.local_dim, chunk_len=c.chunk_len)
        self.pooling = ChunkPooling(mode=c.pooling, local_dim=c.local_dim, global_dim=c.global_dim)
        self.chunk_encoder = ChunkEncoder(dim=c.local_dim, depth=c.local_depth, heads=c.local_heads,
                                          mlp_ratio=c.mlp_ratio, dropout=c.dropout)
        self.global_encoder = GlobalEncoder(dim=c.global_dim, depth=c.global_depth, heads=c.global_heads,
                                            mlp_ratio=c.mlp_ratio, dropout=c.dropout)
        self.heads = PosteriorHeads(dim=c.global_dim, latent_dim=c.latent_dim)
        self.global_decoder = GlobalDecoder(latent_dim=c.latent_dim, dim=c.global_dim, depth=c.decoder_global_depth,
                                            heads=c.global_heads, mlp_ratio=c.mlp_ratio, dropout=c.dropout)
        span = c.chunk_len + 2 * c.chunk_overlap  # frames decoded per chunk
        self.body = BodyOutput(c.features, span) if c.output == "body" else None
        out_features = self.body.params if self.body is not None else c.features  # per frame
        self.chunk_decoder = ChunkDecoder(global_dim=c.global_dim, dim=c.local_dim, chunk_len=span,
                                          features=out_features, depth=c.decoder_local_depth, heads=c.local_heads,
                                          mlp_ratio=c.mlp_ratio, dropout=c.dropout)
        self.linear_encoder = self.linear_decoder = None
        if c.linear_chunk_path:
            self.linear_encoder = nn.Linear(c.chunk_len * 2 * c.features, c.latent_dim)
            self.linear_decoder = nn.Linear(c.latent_dim, span * out_features)
        # optimizer steps taken: drives the KL warm-up; a buffer, so checkpoints carry it
        self.register_buffer("optimizer_steps", torch.zeros((), dtype=torch.int64))
        self.apply(self._init_weights)
        if self.pooling.query is not None:
            nn.init.trunc_normal_(self.pooling.query, std=0.02)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # ----------------------------------------------------------------------- inputs

    def prepare_input(self, x: Tensor, valid: Tensor | None, frame_mask: Tensor | None
                      ) -> tuple[Tensor, Tensor, Tensor, int]:
        """Padded ``x`` [B, N*L, F], ``valid`` [B, N*L, F] (bool; False on padding) and
        ``frame_mask`` [B, N*L] (True: real frame), plus the input length T.

        Accepts the cached window layout [B, T, 1, F] or [B, T, F]; ``valid`` defaults to all
        observed, ``frame_mask`` [B, T] to all real.
        """
        if x.ndim == 4:
            if x.shape[2] != 1:
                raise ValueError(f"x [B, T, 1, F] must have a singleton third axis, got shape {tuple(x.shape)}")
            x = rearrange(x, "b t 1 f -> b t f")
        if x.ndim != 3 or x.shape[-1] != self.config.features:
            raise ValueError(f"x must be [B, T, 1, F] or [B, T, F] with F = {self.config.features}, "
                             f"got shape {tuple(x.shape)}")
        b, t, _ = x.shape
        if valid is None:
            valid = torch.ones_like(x, dtype=torch.bool)
        else:
            valid = valid.reshape(b, t, -1).bool() if valid.ndim == 4 else valid.bool()  # (B, T, F)
            if valid.shape != x.shape:
                raise ValueError(f"valid must match x {tuple(x.shape)}, got {tuple(valid.shape)}")
        if frame_mask is None:
            frame_mask = torch.ones(b, t, dtype=torch.bool, device=x.device)
        elif frame_mask.shape != (b, t):
            raise ValueError(f"frame_mask must be [B, T] = {(b, t)}, got {tuple(frame_mask.shape)}")
        pad = chunk_count(t, self.config.chunk_len) * self.config.chunk_len - t
        x = F.pad(x, (0, 0, 0, pad))  # (B, N*L, F)
        valid = F.pad(valid & frame_mask[..., None], (0, 0, 0, pad))  # (B, N*L, F)
        frame_mask = F.pad(frame_mask.bool(), (0, pad))  # (B, N*L)
        return x, valid, frame_mask, t

    # ----------------------------------------------------------------------- encoder / decoder

    def encode(self, x: Tensor, valid: Tensor | None = None, frame_mask: Tensor | None = None, *,
               return_attention: bool = False) -> Posterior:
        """``q(z | x)`` per chunk for ``x`` [B, T, 1, F] or [B, T, F] (see :meth:`prepare_input`)."""
        x, valid, frame_mask, num_frames = self.prepare_input(x, valid, frame_mask)
        b, L = x.shape[0], self.config.chunk_len
        tokens = self.embed(x, valid)  # (B, N*L, Dl)
        frames = rearrange(tokens, "b (n l) d -> (b n) l d", l=L)
        real = rearrange(frame_mask, "b (n l) -> (b n) l", l=L)
        frames, real_tokens = self.pooling.prepend(frames, real)  # (B*N, S, Dl), S = L or 1 + L
        frames, local_maps = self.chunk_encoder(frames, real_tokens, return_attention)
        summaries = rearrange(self.pooling(frames, real), "(b n) d -> b n d", b=b)  # (B, N, Dg)
        chunk_mask = rearrange(frame_mask, "b (n l) -> b n l", l=L).any(-1)  # (B, N)
        summaries, global_maps = self.global_encoder(summaries, chunk_mask, return_attention)
        mu, logvar = self.heads(summaries)  # (B, N, Z) each
        if self.linear_encoder is not None:
            v = valid.to(x.dtype)
            chunks = rearrange(torch.cat([x * v, v], dim=-1), "b (n l) f -> b n (l f)", l=L)  # (B, N, L*2F)
            mu = mu + self.linear_encoder(chunks)
        local_maps = [rearrange(a, "(b n) h s r -> b n h s r", b=b) for a in local_maps]
        return Posterior(mu, logvar, chunk_mask, frame_mask, num_frames, local_maps, global_maps)

    def decode(self, z: Tensor, *, num_frames: int, frame_mask: Tensor | None = None,
               return_attention: bool = False) -> Decoded:
        """Poses [B, num_frames, F] from latents ``z`` [B, N, latent_dim], N = ceil(T / L).

        ``frame_mask`` [B, N*L] or [B, T] marks real frames (default: the first
        ``num_frames``); padded frames are masked in the local decoder and cropped.
        """
        b, n, _ = z.shape
        L = self.config.chunk_len
        if n != chunk_count(num_frames, L):
            raise ValueError(f"{num_frames} frames need {chunk_count(num_frames, L)} chunks of {L}, "
                             f"but z has {n}")
        if frame_mask is None:
            frame_mask = torch.ones(b, num_frames, dtype=torch.bool, device=z.device)
        elif frame_mask.shape[0] != b or not num_frames <= frame_mask.shape[1] <= n * L:
            raise ValueError(f"frame_mask must be [B, T] or [B, N*L] = [{b}, {num_frames}] or [{b}, {n * L}], "
                             f"got {tuple(frame_mask.shape)}")
        frame_mask = F.pad(frame_mask.bool(), (0, n * L - frame_mask.shape[1]))  # (B, N*L)
        chunk_mask = rearrange(frame_mask, "b (n l) -> b n l", l=L).any(-1)  # (B, N)
        condition, global_maps = self.global_decoder(z, chunk_mask, return_attention)  # (B, N, Dg)
        h = self.config.chunk_overlap
        span = L + 2 * h  # a chunk's frames and its overlaps (frames outside the sequence are padding)
        real = rearrange(F.pad(frame_mask, (h, h)).unfold(1, span, L), "b n s -> (b n) s")
        poses, local_maps = self.chunk_decoder(rearrange(condition, "b n d -> (b n) d"), real, return_attention)
        if self.linear_decoder is not None:
            poses = poses + rearrange(self.linear_decoder(z), "b n (s f) -> (b n) s f", s=span)
        poses = rearrange(poses, "(b n) s f -> b n s f", b=b)
        if self.body is not None:
            poses = self.body.smooth(poses)
        pose = overlap_add(poses, L, h, chunk_mask)  # (B, N*L, P)
        if self.body is not None:
            pose = self.body(pose)
        pose = pose[:, :num_frames]  # (B, T, F)
        attention = None
        if return_attention:
            local_maps = [rearrange(a, "(b n) h s r -> b n h s r", b=b) for a in local_maps]
            attention = AttentionMaps([], [], global_maps, local_maps)
        return Decoded(pose, z, attention)

    def forward(self, x: Tensor, valid: Tensor | None = None, frame_mask: Tensor | None = None, *,
                sample_latent: bool = True, return_attention: bool = False,
                noise_seed: Tensor | None = None) -> PoseVAEOutput:
        """Encode, draw ``z`` (reparameterised sample, or ``mu`` when ``sample_latent`` is
        False) and decode to ``recon`` [B, T, F]. The sample's noise comes from the global
        RNG, or from :meth:`latent_noise` when ``noise_seed`` [B] is given."""
        posterior = self.encode(x, valid, frame_mask, return_attention=return_attention)
        z = posterior.mu
        if sample_latent:
            eps = torch.randn_like(posterior.mu) if noise_seed is None else self.latent_noise(noise_seed, posterior.mu)
            z = posterior.mu + torch.exp(0.5 * posterior.logvar) * eps
        decoded = self.decode(z, num_frames=posterior.num_frames, frame_mask=posterior.frame_mask,
                              return_attention=return_attention)
        attention = None
        if decoded.attention is not None:
            attention = AttentionMaps(posterior.local_attention, posterior.global_attention,
                                      decoded.attention.decoder_global, decoded.attention.decoder_local)
        return PoseVAEOutput(decoded.pose, posterior, z, attention)

    # ----------------------------------------------------------------------- loss and training

    def kl_weight(self) -> float:
        """``beta * min(1, steps / kl_warmup_steps)`` at the current optimizer step count."""
        warmup = self.config.kl_warmup_steps
        ramp = 1.0 if warmup == 0 else min(1.0, int(self.optimizer_steps) / warmup)
        return self.config.beta * ramp

    def forward_loss(self, x: Tensor, valid: Tensor | None, frame_mask: Tensor | None,
                     out: PoseVAEOutput) -> tuple[Tensor, dict[str, float]]:
        """Masked reconstruction + ``beta(step) * KL`` and the metrics to log."""
        x, valid, _, t = self.prepare_input(x, valid, frame_mask)
        x, valid = x[:, :t], valid[:, :t]  # (B, T, F): padding is False in valid already
        weight = valid.to(out.recon.dtype)
        recon = ((out.recon - x) ** 2 * weight).sum() / weight.sum().clamp_min(1.0)

        post = out.posterior
        kl_units = 0.5 * (post.mu ** 2 + post.logvar.exp() - 1.0 - post.logvar)  # (B, N, Z)
        real = post.chunk_mask  # (B, N)
        kl_per_dim = kl_units[real].sum(0) / real.sum().clamp_min(1)  # (Z,): batch mean over real chunks
        kl = kl_per_dim.sum()
        kl_term = kl if self.config.free_bits is None else kl_per_dim.clamp_min(self.config.free_bits).sum()
        beta = self.kl_weight()
        loss = recon + beta * kl_term

        with torch.no_grad():
            mu = post.mu[real].float()  # (M, Z): posterior means of the real chunks
            active = int((mu.var(0, correction=0) > ACTIVE_UNIT_THRESHOLD).sum()) if mu.shape[0] > 1 else 0
        metrics = {"recon": float(recon.detach()), "kl": float(kl.detach()), "beta": beta,
                   "active_units": float(active)}
        return loss, metrics

    @staticmethod
    def latent_noise(noise_seed: Tensor, like: Tensor) -> Tensor:
        """Standard normal noise shaped as ``like`` [B, N, Z]; sample i from a generator
        seeded with ``noise_seed[i]``, so its noise does not depend on the other samples of
        the batch (nor on how a global batch is split over processes)."""
        noise = [torch.randn(like.shape[1:], generator=torch.Generator().manual_seed(seed))
                 for seed in noise_seed.tolist()]
        return torch.stack(noise).to(device=like.device, dtype=like.dtype)

    def step_inputs(self, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        """One noise seed per sample of the global batch (``noise_seed`` [B] int64)."""
        return {"noise_seed": torch.randint(0, 2**62, (batch_size,), generator=generator)}

    def training_step(self, batch: dict[str, Tensor]) -> StepOutput:
        """``batch["x"]`` [B, T, 1, F] (or [B, T, F]), optional ``valid`` (same shape),
        ``frame_mask`` [B, T] bool and ``noise_seed`` [B] (the loop's :meth:`step_inputs`)."""
        x, valid, frame_mask = batch["x"], batch.get("valid"), batch.get("frame_mask")
        out = self(x, valid, frame_mask, noise_seed=batch.get("noise_seed"))
        loss, metrics = self.forward_loss(x, valid, frame_mask, out)
        return StepOutput(loss, metrics)

    def no_weight_decay(self) -> set[str]:
        """The learned summary token is not decayed (as a CLS token; positions are fixed), nor
        are the body template and the log of its offsets' bound (decay would pull the body
        to a point and the bound to 1)."""
        skip = {"pooling.query"} if self.pooling.query is not None else set()
        return skip | ({"body.template", "body.log_spread"} if self.body is not None else set())

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """Record that ``step + 1`` optimizer steps have been taken (KL warm-up clock)."""
        self.optimizer_steps.fill_(step + 1)

    # ----------------------------------------------------------------------- generation

    @torch.no_grad()
    def reconstruct(self, x: Tensor, valid: Tensor | None = None, frame_mask: Tensor | None = None, *,
                    return_attention: bool = False) -> PoseVAEOutput:
        """Reconstruction from the posterior mean (``z = mu``); call ``eval()`` first."""
        return self(x, valid, frame_mask, sample_latent=False, return_attention=return_attention)

    @torch.no_grad()
    def sample_prior(self, num_samples: int, num_frames: int, *, generator: torch.Generator | None = None,
                     return_attention: bool = False) -> Decoded:
        """``num_samples`` sequences of ``num_frames`` frames decoded from ``z ~ N(0, I)`` per
        chunk; ``generator`` (on CPU or the model's device) makes the draw reproducible."""
        if num_samples < 1 or num_frames < 1:
            raise ValueError(f"need num_samples >= 1 and num_frames >= 1, got {num_samples}, {num_frames}")
        shape = (num_samples, chunk_count(num_frames, self.config.chunk_len), self.config.latent_dim)
        device = self.optimizer_steps.device
        z = torch.randn(shape, generator=generator, device=generator.device if generator else device)
        return self.decode(z.to(device), num_frames=num_frames, return_attention=return_attention)

    @staticmethod
    def interpolate(z_start: Tensor, z_end: Tensor, num_steps: int) -> Tensor:
        """Linear path between two latents [N, Z] (or [..., N, Z]): [num_steps, ..., N, Z],
        from ``z_start`` (first) to ``z_end`` (last); decode it with :meth:`decode`."""
        if z_start.shape != z_end.shape:
            raise ValueError(f"latents differ in shape: {tuple(z_start.shape)} vs {tuple(z_end.shape)}")
        if num_steps < 2:
            raise ValueError(f"interpolation needs num_steps >= 2, got {num_steps}")
        w = torch.linspace(0.0, 1.0, num_steps, device=z_start.device, dtype=z_start.dtype)
        w = w.reshape(num_steps, *([1] * z_start.ndim))  # (steps, 1, ..., 1)
        return (1 - w) * z_start + w * z_end
