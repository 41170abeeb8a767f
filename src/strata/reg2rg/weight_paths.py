"""The published weights a Reg2RG config names, checked before anything reads them.

Reg2RG is the only family that needs files from outside the project (LLaMA-2 and the
RadFM / Reg2RG releases). The DAG leaves Reg2RG out of the default target while any of
them is missing or unreadable, so the other families still run; a Reg2RG rule asked for
explicitly fails at its start with :class:`Reg2RGWeightsError`, whose message names the
config key, the path and what is expected there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from strata.reg2rg.config import EncoderConfig, Reg2RGConfig, TokenizerConfig

LLAMA = "the Hugging Face folder of meta-llama/Llama-2-7b-chat-hf (accept its licence on huggingface.co, then `huggingface-cli download meta-llama/Llama-2-7b-chat-hf --local-dir <path>` on a machine with internet)"
REG2RG_RELEASE = "published with Reg2RG (github.com/zhi-xuan-chen/Reg2RG, README: pretrained weights)"


class Reg2RGWeightsError(FileNotFoundError):
    """A weight path of the ``reg2rg:`` section is missing, empty or unreadable."""


@dataclass(frozen=True)
class WeightPath:
    """One configured weight location and what must lie there."""

    key: str
    path: Path
    kind: Literal["file", "model_dir", "tokenizer_dir"]
    expected: str

    def problem(self) -> str | None:
        """Why this path cannot be used, or None when it can."""
        where = f"{self.key}: {self.path}"
        if not self.path.exists():
            return f"{where} does not exist; expected {self.expected}"
        if self.kind == "file":
            return _file_problem(self.path, where, self.expected)
        if not self.path.is_dir():
            return f"{where} is not a folder; expected {self.expected}"
        names = {p.name for p in self.path.iterdir()}
        if self.kind == "model_dir":
            weights = [n for n in names if n.endswith(".safetensors") or n.startswith("pytorch_model")]
            if "config.json" not in names or not weights:
                return f"{where} holds no Hugging Face model (config.json and *.safetensors or pytorch_model*.bin); expected {self.expected}"
            return _file_problem(self.path / "config.json", where, self.expected)
        if not names & {"tokenizer.json", "tokenizer.model"}:
            return f"{where} holds no tokenizer (tokenizer.json or tokenizer.model); expected {self.expected}"
        return None


def _file_problem(path: Path, where: str, expected: str) -> str | None:
    if not path.is_file():
        return f"{where} is not a file; expected {expected}"
    try:
        with path.open("rb") as handle:
            first = handle.read(1)
    except OSError as err:
        return f"{where} cannot be read ({err.strerror}); expected {expected}"
    if not first:
        return f"{where} is empty; expected {expected}"
    return None


def tokenizer_weights(cfg: TokenizerConfig) -> list[WeightPath]:
    if cfg.pretrained is None:
        return []
    return [WeightPath("reg2rg.tokenizer.pretrained", cfg.pretrained, "tokenizer_dir",
                       f"the LLaMA tokenizer files: {LLAMA}")]


def encoder_weights(cfg: EncoderConfig, checkpoint: Path | None) -> list[WeightPath]:
    paths = []
    if cfg.vit_weights is not None:
        paths.append(WeightPath("reg2rg.encoder.vit_weights", cfg.vit_weights, "file",
                                f"RadFM_vit3d.pth, the RadFM ViT-3D state dict {REG2RG_RELEASE}"))
    if checkpoint is not None:
        paths.append(_checkpoint(checkpoint))
    return paths


def _checkpoint(path: Path) -> WeightPath:
    return WeightPath("reg2rg.checkpoint", path, "file", f"pytorch_model.bin, the trained Reg2RG model {REG2RG_RELEASE}")


def all_weights(cfg: Reg2RGConfig) -> list[WeightPath]:
    """Every weight location the section names (none for the demo's random models)."""
    paths = [*encoder_weights(cfg.encoder, cfg.checkpoint), *tokenizer_weights(cfg.tokenizer)]
    if cfg.adapter_weights is not None:
        paths.append(WeightPath("reg2rg.adapter_weights", cfg.adapter_weights, "file",
                                f"RadFM_perceiver_fc.pth, the RadFM perceiver and fc {REG2RG_RELEASE}"))
    if cfg.llm.pretrained is not None:
        paths.append(WeightPath("reg2rg.llm.pretrained", cfg.llm.pretrained, "model_dir", LLAMA))
    return paths


def weight_problems(paths: list[WeightPath]) -> list[str]:
    return [problem for path in paths if (problem := path.problem()) is not None]


def require_weights(paths: list[WeightPath]) -> None:
    """Raise :class:`Reg2RGWeightsError` listing every unusable weight path."""
    problems = weight_problems(paths)
    if problems:
        raise Reg2RGWeightsError("Reg2RG cannot run:\n  " + "\n  ".join(problems))
