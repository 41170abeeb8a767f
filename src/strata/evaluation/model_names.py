"""Values of the ``model`` column of evaluate outputs: the checkpoint and its baselines.

Pure Python (no torch), so the summary and verdict jobs import it without the model stack.
"""

#: the checkpoint itself (every other value names a baseline)
TRAINED = "trained"
RANDOM_INIT, PCA_RAW, CONSTANT = "random_init", "pca", "constant"
KINEMATIC, MASK_VOLUME = "kinematic", "mask_volume"
#: baselines that encode the labels' own making (never the margin's reference)
DOMAIN = frozenset({KINEMATIC, MASK_VOLUME})
