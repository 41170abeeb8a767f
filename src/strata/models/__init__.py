"""Model families: hierarchical ViT-3D MAE (Hiera style), H-JEPA, pose VAE, Reg2RG."""
