"""Typed configuration of Reg2RG (the top-level ``reg2rg:`` section, docs/design.md §4.4).

Plain dataclasses without torch, so that :mod:`strata.config` and the Snakefile can build
and check them cheaply. ``config/schema.yaml`` validates the YAML first; these classes
are built from the validated mapping with :func:`strata.config.from_dict`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class ViT3DConfig:
    """A ViT-3D encoder as RadFM builds it (vision encoder and mask encoder).

    Args:
        in_channels: channels of the input volume (3 for the CT encoder, 1 for masks).
        patch_size: (p_h, p_w, p_d) voxels per patch; every input side must divide.
        pos_grid: lengths of the learned height / width / depth position tables; an input
            whose patch grid is smaller uses every ``pos_grid // grid``-th row (RadFM's
            tables are sized for 512 x 512 x 512 voxels: 16, 16, 128).
        dim: token width; divisible by 3 (the three tables are ``dim / 3`` wide each).
        depth: number of pre-norm transformer blocks.
        heads: attention heads.
        head_dim: width per head (``heads * head_dim`` is the attention's inner width).
        mlp_dim: hidden width of the GELU feed-forward network.
    """

    in_channels: int
    patch_size: tuple[int, int, int]
    pos_grid: tuple[int, int, int]
    dim: int
    depth: int
    heads: int
    head_dim: int
    mlp_dim: int


@dataclass(frozen=True)
class EncoderConfig:
    """The frozen encoders whose outputs the token cache stores.

    Args:
        vit: the CT ViT-3D (global volume and every region crop).
        mask: the mask ViT-3D (region masks; mean-pooled into one geometry vector).
        vit_weights: RadFM ``RadFM_vit3d.pth``; ``null`` = random initialisation from the
            top-level seed (the demo: a frozen random ViT, whose features are random
            projections of the patches).
        cache_dtype: storage dtype of the cached tokens.
    """

    vit: ViT3DConfig
    mask: ViT3DConfig
    vit_weights: Path | None
    cache_dtype: Literal["float16", "float32"]


@dataclass(frozen=True)
class PerceiverConfig:
    """Perceiver resampler (Flamingo / RadFM): learned latents cross-attending to tokens.

    Args:
        num_latents: output tokens per volume (32 in Reg2RG).
        depth: attention + feed-forward layers.
        heads: attention heads.
        head_dim: width per head.
        ff_mult: feed-forward hidden width = ``ff_mult * dim``.
    """

    num_latents: int
    depth: int
    heads: int
    head_dim: int
    ff_mult: int


@dataclass(frozen=True)
class TinyLlamaConfig:
    """A randomly initialised ``LlamaConfig`` model (the demo).

    Args:
        hidden_size: model width.
        num_layers: decoder layers.
        num_heads: attention heads.
        intermediate_size: MLP hidden width.
        initializer_range: std of the random weights. The frozen random LM head limits the
            logits to about ``initializer_range * hidden_size``; LLaMA's 0.02 keeps them
            below ~3 at width 128, too flat to learn the reports with LoRA alone.
    """

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    initializer_range: float


@dataclass(frozen=True)
class LLMConfig:
    """The causal language model.

    Args:
        pretrained: local directory of a Hugging Face LLaMA (``LlamaForCausalLM``, read with
            ``local_files_only=True``; nothing is downloaded), or ``null`` for ``tiny``.
        tiny: architecture of the random model used when ``pretrained`` is null.
    """

    pretrained: Path | None
    tiny: TinyLlamaConfig | None


@dataclass(frozen=True)
class TokenizerConfig:
    """The tokenizer; the special visual tokens are always added by strata.

    Args:
        pretrained: local tokenizer directory (the LLaMA's), or ``null`` to train a BPE
            tokenizer with the ``tokenizers`` library on the cached report corpus.
        vocab_size: target vocabulary of the trained tokenizer (before special tokens).
    """

    pretrained: Path | None
    vocab_size: int


@dataclass(frozen=True)
class LoraSettings:
    """PEFT LoRA on the language model (Reg2RG: r 8, alpha 32, dropout 0.1, q/k/v/o).

    Args:
        r: rank.
        alpha: scaling numerator (scale = alpha / r).
        dropout: dropout on the LoRA input.
        target_modules: linear layers that get adapters.
    """

    r: int
    alpha: int
    dropout: float
    target_modules: tuple[str, ...]


@dataclass(frozen=True)
class Reg2RGDataConfig:
    """How a study becomes a prompt + answer token sequence.

    Args:
        max_seq: longest sequence (prompt + answer + EOS).
        on_overflow: an over-long sequence is an ``error`` naming the study, or the answer
            is ``truncate``-d keeping room for EOS (a prompt that alone does not fit is
            always an error).
        shuffle_regions: shuffle the region order per sample (training only).
    """

    max_seq: int
    on_overflow: Literal["error", "truncate"]
    shuffle_regions: bool


@dataclass(frozen=True)
class Reg2RGTrainConfig:
    """Hugging Face ``Trainer`` settings (Reg2RG's published values in ``full.yaml``).

    Args:
        lr: peak learning rate.
        scheduler: transformers scheduler name.
        warmup_steps: warm-up optimizer steps.
        weight_decay: AdamW weight decay.
        batch_size: per-device micro-batch.
        grad_accum: gradient accumulation steps.
        epochs: epochs; a checkpoint (and a generate / evaluate job) after every epoch.
        max_grad_norm: gradient clipping (0 disables).
        gradient_checkpointing: recompute LLM activations in the backward pass.
        precision: ``auto`` = bf16 when a GPU is there, else fp32.
        num_workers: DataLoader workers.
        repeats: passes over the training studies per epoch (default 1; the demo trains
            many short passes and saves few checkpoints, each of which is generated for).
    """

    lr: float
    scheduler: Literal["constant_with_warmup", "cosine", "linear", "constant"]
    warmup_steps: int
    weight_decay: float
    batch_size: int
    grad_accum: int
    epochs: int
    max_grad_norm: float
    gradient_checkpointing: bool
    precision: Literal["auto", "fp32", "bf16"]
    num_workers: int
    repeats: int = 1

    def checkpoint_epochs(self) -> list[int]:
        """The checkpoints the DAG knows: one per epoch, named by the epoch number."""
        return list(range(1, self.epochs + 1))


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings, explicit and recorded with every output.

    Args:
        max_new_tokens: tokens generated per sequence.
        num_beams: beam search width (1 = greedy when ``do_sample`` is false).
        do_sample: sample instead of greedy/beam decoding.
        temperature: sampling temperature (used only when sampling).
        top_k: sampling top-k (used only when sampling).
        repetition_penalty: 1.0 = none.
        batch_size: sequences decoded together (with the KV cache); the generate stage
            also writes one resumable part file per ``batch_size`` studies.
        mode: ``study`` (one sequence per study, split into regions) or ``region`` (one
            sequence per listed region); see :mod:`strata.reg2rg.generate`.
    """

    max_new_tokens: int
    num_beams: int
    do_sample: bool
    temperature: float
    top_k: int
    repetition_penalty: float
    batch_size: int
    mode: Literal["study", "region"] = "study"


@dataclass(frozen=True)
class Reg2RGSplitConfig:
    """Held-out studies of the generate / evaluate stages (never trained on).

    Args:
        held_out: number of studies held out, drawn from the sorted study ids with ``seed``
            (at least one study always stays for training).
        seed: seed of that draw.
    """

    held_out: int
    seed: int


@dataclass(frozen=True)
class Reg2RGConfig:
    """The whole ``reg2rg:`` section.

    Args:
        run: run name; outputs go to ``results/reg2rg/<run>/``.
        encoder: the frozen encoders (and the token cache they feed).
        perceiver: the trainable perceiver resampler.
        adapter_weights: RadFM ``RadFM_perceiver_fc.pth`` (perceiver; its ``fc`` is used
            only when its shape fits the LLM width), or null.
        checkpoint: a published Reg2RG ``pytorch_model.bin`` to start from, or null.
        llm: the language model.
        tokenizer: the tokenizer.
        lora: LoRA adapters.
        data: prompt construction.
        train: the training stage.
        deepspeed: a DeepSpeed JSON config (``config/deepspeed/zero2.json``), or null.
        generation: decoding settings of the generate stage.
        split: held-out studies (null: every study is trained on and generated for).
        gpus: GPUs of the training job (its Snakemake ``gpu`` resource); more than one
            launches ``torchrun`` with that many processes (DeepSpeed ZeRO-2 when
            ``deepspeed`` is set, else DDP through HF Trainer). 0 = CPU, even where a GPU is.
        allow_cpu: train on the CPU (with a warning) when torch sees fewer than ``gpus``
            GPUs, instead of stopping the job.
    """

    run: str
    encoder: EncoderConfig
    perceiver: PerceiverConfig
    adapter_weights: Path | None
    checkpoint: Path | None
    llm: LLMConfig
    tokenizer: TokenizerConfig
    lora: LoraSettings
    data: Reg2RGDataConfig
    train: Reg2RGTrainConfig
    deepspeed: Path | None
    generation: GenerationConfig | None = None  # not needed to train (the train rule leaves it out)
    split: Reg2RGSplitConfig | None = None
    gpus: int = 0
    allow_cpu: bool = False
