"""Figures of the ``figures`` rules (matplotlib, Agg backend): attention rollout overlays
(``rollout_maps`` computes, ``ct`` / ``pose`` draw), metric-vs-checkpoint and loss curves
(``curves``) and pose VAE reconstructions and samples (``pose``)."""
