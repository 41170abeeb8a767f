"""strata: CT and pose data to hierarchical models, as a reproducible Snakemake pipeline."""

__version__ = "0.1.0"
