"""The training machinery shared by the self-supervised and VAE models (one loop)."""
