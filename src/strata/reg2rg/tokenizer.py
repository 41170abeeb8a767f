"""The Reg2RG tokenizer: a LLaMA tokenizer (full config) or a BPE tokenizer trained with
the ``tokenizers`` library on the cached report corpus (demo), plus the special tokens
of :mod:`strata.reg2rg.tokens` at ids ``V .. V + 365``.

Saved with ``save_pretrained`` into ``results/reg2rg/tokenizer/`` (rule
``reg2rg_tokenizer``) and read back with :func:`load_tokenizer`, which checks the id layout.
LLaMA conventions: pad = ``<unk>`` = 0, BOS = ``<s>`` = 1, EOS = ``</s>`` = 2.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from strata.ct.regions import REGIONS
from strata.io.atomic import atomic_dir
from strata.reg2rg.config import TokenizerConfig
from strata.reg2rg.tokens import VisualTokenLayout

BASE_SPECIALS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2 as in LLaMA


def report_corpus(reports: pd.DataFrame) -> list[str]:
    """Training text: every report sentence plus the fixed prompt/answer phrases."""
    from strata.reg2rg.dataset import INSTRUCTION, answer_text, prompt_text

    layout = VisualTokenLayout(base_vocab=0)
    texts = [str(s) for s in reports["sentence"] if str(s).strip()]
    texts.append(prompt_text(len(REGIONS), layout).replace(layout.image_text(), "")
                 .replace("<image>", "").replace("</image>", ""))
    texts.append(INSTRUCTION)
    texts.append(answer_text([(r, "") for r in REGIONS]))
    # the prompt without its special tokens (they are added, never learned)
    return [t for t in texts if t]


def train_tokenizer(corpus: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """BPE with SentencePiece-style ``▁`` spaces (exact round trip) and single digits."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=False))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
        pre_tokenizers.Digits(individual_digits=True)])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(BASE_SPECIALS), min_frequency=1,
                                  show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<unk>")


def add_visual_tokens(tokenizer: PreTrainedTokenizerBase, layout: VisualTokenLayout) -> None:
    """Append the special tokens and check that they landed at ``V .. V + n - 1``."""
    added = tokenizer.add_tokens(layout.special_tokens(), special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids(layout.special_tokens())
    if added != len(ids) or ids != list(range(layout.base_vocab, layout.size)):
        raise ValueError(f"special tokens did not get ids {layout.base_vocab}..{layout.size - 1} "
                         f"(added {added}; does the base tokenizer already contain some of them?)")


def build_tokenizer(cfg: TokenizerConfig, reports: pd.DataFrame, num_latents: int, out_dir: Path) -> None:
    """Train or load the base tokenizer, add the special tokens, save to ``out_dir`` atomically."""
    if cfg.pretrained is None:
        tokenizer = train_tokenizer(report_corpus(reports), cfg.vocab_size)
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(cfg.pretrained), local_files_only=True)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.unk_token  # LLaMA has no pad token: Reg2RG pads with id 0
    layout = VisualTokenLayout(base_vocab=len(tokenizer), image_tokens=num_latents, region_tokens=num_latents + 1,
                               max_regions=len(REGIONS))
    add_visual_tokens(tokenizer, layout)
    with atomic_dir(out_dir) as tmp:
        tokenizer.save_pretrained(str(tmp))


def load_tokenizer(path: Path, num_latents: int) -> tuple[PreTrainedTokenizerBase, VisualTokenLayout]:
    """A saved tokenizer and its special-token layout (checked, never assumed)."""
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    base = tokenizer.convert_tokens_to_ids("<image>")
    layout = VisualTokenLayout(base_vocab=base, image_tokens=num_latents, region_tokens=num_latents + 1,
                               max_regions=len(REGIONS))
    ids = tokenizer.convert_tokens_to_ids(layout.special_tokens())
    if ids != list(range(layout.base_vocab, layout.size)) or len(tokenizer) != layout.size:
        raise ValueError(f"{path}: special tokens are not at ids {layout.base_vocab}..{layout.size - 1}")
    return tokenizer, layout
