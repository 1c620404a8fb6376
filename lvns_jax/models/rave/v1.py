"""Spec of RAVE v1's decoder (acids-rave ``blocks.Generator``) from its hyperparameters.

Structure (channels c_i = 2**(n-i) * capacity): a k=7 conv from the latent, then per ratio r an
upsampling layer (LeakyReLU(.2) + transposed conv, kernel 2r, stride r, padding r//2) and a
residual stack (per kernel size a chain of residual layers, each LeakyReLU -> dilated conv ->
LeakyReLU -> conv, added to its input; the stacks of different kernel sizes are summed). Three
heads read the last features: waveform (k=7 conv to the bands), loudness (1 channel) and the
noise generator (strided convs -> per-band filter amplitudes). Output:
``tanh(wave) * mod_sigmoid(loudness) (+ filtered noise)`` per PQMF band.
"""

from __future__ import annotations


class Ids:
    """Sequential parameter ids, shared by the builders and the converter (same walk order)."""

    def __init__(self):
        self.i = 0

    def __call__(self) -> str:
        pid = f"L{self.i}"
        self.i += 1
        return pid


def get_padding(kernel_size: int, dilation: int = 1, mode: str = "centered"):
    if kernel_size == 1:
        return (0, 0)
    p = (kernel_size - 1) * dilation + 1
    if mode == "centered":
        return ((p - 1) // 2, p // 2)
    if mode == "causal":
        return (p // 2 + (p - 1) // 2, 0)
    raise ValueError(f"padding mode {mode!r}")


def conv(ids, cin, cout, k, stride=1, dilation=1, pad=(0, 0), bias=False, groups=1):
    return ("conv", ids(), k, cin, cout, stride, dilation, groups, pad[0], pad[1], bias)


def convt(ids, cin, cout, k, stride, padding, bias=False, output_padding=0):
    return ("convt", ids(), k, cin, cout, stride, padding, output_padding, bias)


def act(ids, dim, kind="lrelu"):
    if kind == "snake":
        return ("snake", ids(), dim)
    return ("lrelu", 0.2)


DEFAULT = dict(
    latent_size=128, capacity=64, data_size=16, ratios=(4, 4, 4, 2), loud_stride=1,
    use_noise=True, noise_ratios=(4, 4, 4), noise_bands=5, kernel_sizes=(3,),
    dilations_list=((1, 1), (3, 1), (5, 1)), padding_mode="centered", bias=False,
)


def generator_spec(latent_size=128, capacity=64, data_size=16, ratios=(4, 4, 4, 2), loud_stride=1,
                   use_noise=True, noise_ratios=(4, 4, 4), noise_bands=5, kernel_sizes=(3,),
                   dilations_list=((1, 1), (3, 1), (5, 1)), padding_mode="centered", bias=False,
                   noise_active=True):
    ids = Ids()
    n = len(ratios)
    net = [conv(ids, latent_size, 2**n * capacity, 7, pad=get_padding(7, mode=padding_mode), bias=bias)]
    out_dim = None
    for i, r in enumerate(ratios):
        in_dim = 2 ** (n - i) * capacity
        out_dim = 2 ** (n - i - 1) * capacity
        if r > 1:
            up = convt(ids, in_dim, out_dim, 2 * r, r, r // 2, bias=bias)
        else:
            up = conv(ids, in_dim, out_dim, 3, pad=get_padding(3, mode=padding_mode), bias=bias)
        net.append(("seq", (("lrelu", 0.2), up)))
        stacks = []
        for k in kernel_sizes:
            layers = []
            for dils in dilations_list:
                seq = []
                for d in dils:
                    seq.append(("lrelu", 0.2))
                    seq.append(conv(ids, out_dim, out_dim, k, dilation=d,
                                    pad=get_padding(k, d, padding_mode), bias=bias))
                layers.append(("res", ("seq", tuple(seq))))
            stacks.append(("seq", tuple(layers)))
        net.append(("sum", tuple(stacks)))
    wave = conv(ids, out_dim, data_size, 7, pad=get_padding(7, mode=padding_mode), bias=bias)
    loud = conv(ids, out_dim, 1, 2 * loud_stride + 1, stride=loud_stride,
                pad=get_padding(2 * loud_stride + 1, mode=padding_mode), bias=bias)
    noise = None
    if use_noise:
        chans = [out_dim] * len(noise_ratios) + [data_size * noise_bands]
        layers = []
        for i, r in enumerate(noise_ratios):
            layers.append(conv(ids, chans[i], chans[i + 1], 3, stride=r,
                               pad=get_padding(3, mode=padding_mode), bias=bias))
            if i != len(noise_ratios) - 1:
                layers.append(("lrelu", 0.2))
        target = 1
        for r in noise_ratios:
            target *= r
        noise = ("noise", ("seq", tuple(layers)), data_size, noise_bands, target)
    return ("v1", ("seq", tuple(net)), wave, loud, loud_stride, noise, bool(use_noise and noise_active))
