"""Per-checkpoint generation, evaluation and the summary table (docs/design.md §2.5-2.6).

Modules (one job each): ``config`` (typed ``evaluation:`` section), ``targets`` (every
output path, known from the config; no torch, the Snakefile imports it), ``checkpoints``
(rebuild a model from ``checkpoints/<step>/``), ``parts`` (resumable chunked parquet
writer), ``data`` (cached inputs + deterministic splits), ``embeddings`` (per-level
features of the hierarchical ViT-3D and H-JEPA), ``posevae`` (reconstructions, prior
samples, interpolations, VAE metrics), ``generate`` / ``evaluate`` (the rule bodies),
``probes`` (ridge linear probes), ``report_metrics`` (BLEU / METEOR / ROUGE-L for
report generation) and ``summary`` (table over checkpoints, best checkpoint per run).
"""
