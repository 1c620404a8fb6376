"""Spec of the RAVE v2 family's decoder (acids-rave ``blocks.GeneratorV2``) from hyperparameters.

Structure: a conv from the latent to 2**n * capacity channels, then per (reversed) ratio r an
activation + transposed conv (kernel 2r, stride r, padding r//2, channels halved) followed by
residual dilated units (activation -> dilated conv -> activation -> 1x1 conv, added to the
input; AdaIN before each unit is the identity in an export that has not learnt a transfer),
a final activation and a waveform conv (2*data channels with amplitude modulation:
``x * sigmoid(a)``). Optional noise generator (``NoiseGeneratorV2``) on the last features;
output ``tanh(wave + noise)`` per PQMF band. v3 = v2 + Snake activations + AdaIN.
"""

from __future__ import annotations

from lvns_jax.models.rave.v1 import Ids, act, conv, convt, get_padding


def generator_spec(latent_size=128, capacity=96, data_size=16, ratios=(4, 4, 4, 2), kernel_size=3,
                   dilations=((1, 3, 9), (1, 3, 9), (1, 3, 9), (1, 3)), amplitude_modulation=True,
                   noise=None, activation="lrelu", unit_activation="lrelu", padding_mode="centered",
                   bias=False):
    """noise: None or dict(hidden_size, ratios, noise_bands, activation)."""
    ids = Ids()
    if isinstance(dilations[0], int):
        dilations = [dilations for _ in ratios]
    dil_rev = list(dilations)[::-1]
    rat_rev = list(ratios)[::-1]
    nc = 2 ** len(ratios) * capacity
    net = [conv(ids, latent_size, nc, kernel_size, pad=get_padding(kernel_size, mode=padding_mode), bias=bias)]
    for r, dils in zip(rat_rev, dil_rev):
        out = nc // 2
        net.append(act(ids, nc, activation))
        net.append(convt(ids, nc, out, 2 * r, r, r // 2, bias=bias))
        nc = out
        for d in dils:
            unit = ("seq", (
                act(ids, nc, unit_activation),
                conv(ids, nc, nc, kernel_size, dilation=d, pad=get_padding(kernel_size, d, padding_mode), bias=bias),
                act(ids, nc, unit_activation),
                conv(ids, nc, nc, 1, bias=bias),
            ))
            net.append(("res", unit))
    net.append(act(ids, nc, activation))
    wave_out = data_size * 2 if amplitude_modulation else data_size
    noise_spec = None
    if noise is not None:
        hid, nr, nb = noise["hidden_size"], noise["ratios"], noise["noise_bands"]
        chans = [nc] + (len(nr) - 1) * [hid] + [data_size * nb]
        layers = []
        for i, r in enumerate(nr):
            layers.append(conv(ids, chans[i], chans[i + 1], 2 * r, stride=r, pad=(r, 0), bias=bias))
            if i != len(nr) - 1:
                layers.append(act(ids, chans[i + 1], noise.get("activation", "lrelu")))
        target = 1
        for r in nr:
            target *= r
        noise_spec = ("noise", ("seq", tuple(layers)), data_size, nb, target)
    wave = conv(ids, nc, wave_out, 2 * kernel_size + 1, pad=get_padding(2 * kernel_size + 1, mode=padding_mode), bias=bias)
    if noise_spec is None:
        net.append(wave)
        return ("v2", ("seq", tuple(net)), None, None, bool(amplitude_modulation))
    return ("v2", ("seq", tuple(net)), wave, noise_spec, bool(amplitude_modulation))
