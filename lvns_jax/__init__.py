"""lvns-jax: LVNS-RAVE latent vector novelty search as one jit-compiled JAX step."""

__version__ = "0.1.0"
