"""Build the engine's :class:`~lvns_jax.models.Models` from the ``rave`` / ``vggish`` config keys."""

from __future__ import annotations

import logging

from lvns_jax.config import Config
from lvns_jax.errors import ConfigError
from lvns_jax.models import Models, toy

log = logging.getLogger("lvns_jax")


def _decoder(cfg: Config):
    """(params, decode(params, z, key), sample_rate, hop, latent_size, description, trained)."""
    if cfg.rave == "toy":
        params = toy.decoder_params(cfg.latent_channels)
        fn = toy.decode_noisy if cfg.noise else toy.decode
        return params, fn, toy.TOY_SAMPLE_RATE, toy.TOY_HOP, cfg.latent_channels, \
            "TOY decoder (not RAVE, for tests)", False
    from lvns_jax import rave

    if cfg.rave.startswith("untrained:"):
        model = rave.untrained(cfg.rave.split(":", 1)[1], seed=0)
    else:
        model = rave.load(cfg.rave)
    return (model.params, model.pure_decode(noise=cfg.noise), model.sample_rate, model.hop,
            model.latent_size, model.description, model.trained)


def _embedder(cfg: Config, sample_rate: int):
    if cfg.vggish == "toy":
        return toy.embedder_params(), toy.embed, "TOY embedder (not VGGish, for tests)", False
    from lvns_jax import vggish

    model = vggish.untrained(seed=0) if cfg.vggish == "untrained" else vggish.load(cfg.vggish)
    return model.params, model.pure_embed(sample_rate), model.description, model.trained


def _embedder_grad(cfg: Config, sample_rate: int):
    """Differentiable embedder for the gradient mutation: VGGish's float64 front-end island is not
    differentiable, so gradients go through its float32 front end (high_precision=False)."""
    if cfg.vggish == "toy":
        return None
    from lvns_jax.models.vggish import model as vggish_model

    def embed_grad(params, audio):
        return vggish_model.embed(params, audio, sample_rate, high_precision=False)

    return embed_grad


def _check_clip_length(cfg: Config, sample_rate: int, hop: int) -> None:
    """VGGish embeds 0.96 s examples: shorter clips have no embedding (NaN) and could never survive."""
    if cfg.vggish == "toy":
        return
    from lvns_jax.models.vggish.frontend import num_examples

    samples = cfg.latent_frames * hop
    if num_examples(samples, sample_rate) >= 1:
        return
    t = cfg.latent_frames
    while num_examples(t * hop, sample_rate) < 1:
        t += 1
    raise ConfigError(f"latent_frames: {cfg.latent_frames} frames x hop {hop} = {samples} samples at {sample_rate} Hz "
                      f"is shorter than one 0.96 s VGGish example; use latent_frames >= {t}")


def build_models(cfg: Config) -> Models:
    dparams, decode, sr, hop, latent_size, ddesc, dtrained = _decoder(cfg)
    if cfg.init == "dataset":  # latents must be decoded by the model that encoded them
        from lvns_jax.container import dataset_model_warning

        mismatch = dataset_model_warning(cfg.dataset_path, cfg.rave)
        if mismatch:
            log.warning("%s", mismatch)
    if latent_size != cfg.latent_channels:
        raise ConfigError(f"latent_channels: the RAVE model {cfg.rave!r} takes {latent_size} latent "
                          f"channels, the config says {cfg.latent_channels}")
    _check_clip_length(cfg, sr, hop)
    eparams, embed, edesc, etrained = _embedder(cfg, sr)
    models = Models(decoder_params=dparams, embedder_params=eparams, decode=decode, embed=embed,
                    sample_rate=sr, hop=hop, latent_channels=latent_size, description=(ddesc, edesc),
                    trained=dtrained and etrained, embed_grad=_embedder_grad(cfg, sr))
    for desc, trained in ((ddesc, dtrained), (edesc, etrained)):
        if not trained:
            log.warning("%s: untrained weights, the sounds and novelty scores are NOT meaningful", desc)
    return models
