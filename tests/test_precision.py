"""The ``precision`` key (lvns_jax.models.precision): validated, saved, refused on resume; bfloat16 gives
bf16 products (in the optimised HLO) with outputs close to float32; float32 multiplies at HIGHEST.

Bound used below: bf16 rounds each operand to 8 significant bits (relative error <= 2^-9 = 0.002);
with float32 accumulation the errors of the ~30 layers add up to a relative L2 error of about 0.006
on RAVE v1's audio and 0.004-0.007 on the embeddings (experiments/precision/matmul.json), i.e. a
cosine of about 1 - 2e-5. ``cosine > 0.999`` (relative L2 < 0.045) leaves a 7x margin and still
fails for a wrong lowering (a transposed or shifted tap gives a cosine far below 0.9).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lvns_jax import config, embedders, generators, runner
from lvns_jax.errors import ConfigError, LvnsError
from lvns_jax.models import precision

BF16_CPU = precision.Policy("bfloat16", conv_as_dot=True)
BF16_XLA = precision.Policy("bfloat16", conv_as_dot=False)


def cosine(a, b):
    a, b = np.asarray(a, np.float64).reshape(len(a), -1), np.asarray(b, np.float64).reshape(len(b), -1)
    return np.sum(a * b, -1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_precision_key_is_validated_saved_and_not_resumable():
    assert config.Config().precision == "float32"
    assert config.from_dict({"precision": "bfloat16"}).precision == "bfloat16"
    assert config.load(None, ["precision=default"]).precision == "default"
    with pytest.raises(ConfigError, match=r"^precision: 'float16' is not one of float32, bfloat16, default$"):
        config.from_dict({"precision": "float16"})
    cfg = config.from_dict({"precision": "bfloat16"})
    assert '\nprecision = "bfloat16"\n' in cfg.to_toml()
    old = runner._as_dict(config.Config())
    with pytest.raises(LvnsError, match=r"^precision: cannot change on resume \(x: precision 'float32' -> 'bfloat16'\)"):
        runner._refuse_changes(old, runner._as_dict(cfg), "x")
    old.pop("precision")  # a run saved before the key existed resumes as float32
    runner._refuse_changes(old, runner._as_dict(config.Config()), "x")


def test_policy_of_a_platform():
    assert precision.policy("bfloat16", "cpu") == BF16_CPU  # XLA:CPU upcasts bf16 convolutions
    assert precision.policy("bfloat16", "tpu") == BF16_XLA
    assert precision.policy("float32", "tpu").lax_precision == jax.lax.Precision.HIGHEST
    assert precision.policy("default", "tpu").lax_precision is None


@pytest.mark.parametrize("stride,dilation,pad", [(1, 1, (1, 1)), (1, 3, (3, 3)), (4, 1, (1, 1)), (1, 1, (6, 0))])
def test_conv_as_dots_is_the_convolution(stride, dilation, pad):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 37, 6)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3 if pad != (6, 0) else 7, 6, 5)), jnp.float32)
    # operands exactly representable in bf16: both lowerings then compute the same float32 sums
    x, w = x.astype(jnp.bfloat16).astype(jnp.float32), w.astype(jnp.bfloat16).astype(jnp.float32)
    ref = precision.conv(x, w, precision.FLOAT32, (stride,), [pad], (dilation,))
    got = precision.conv(x, w, BF16_CPU, (stride,), [pad], (dilation,))
    assert got.dtype == jnp.float32 and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    x2 = jnp.asarray(rng.normal(size=(2, 9, 7, 3)), jnp.float32).astype(jnp.bfloat16).astype(jnp.float32)
    w2 = jnp.asarray(rng.normal(size=(3, 3, 3, 4)), jnp.float32).astype(jnp.bfloat16).astype(jnp.float32)
    dn = ("NHWC", "HWIO", "NHWC")
    np.testing.assert_allclose(precision.conv(x2, w2, BF16_CPU, (1, 1), ((1, 1), (1, 1)), dn=dn),
                               precision.conv(x2, w2, precision.FLOAT32, (1, 1), ((1, 1), (1, 1)), dn=dn),
                               rtol=1e-5, atol=1e-5)


def _optimised(fn, *args) -> str:
    return jax.jit(fn).lower(*args).compile().as_text()


def _product_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if " convolution(" in line or " dot(" in line]


def _bf16_products(text: str) -> int:
    """Dots / convolutions of the optimised HLO whose two operands are declared bf16."""
    types = {}
    for line in text.splitlines():
        parts = line.strip().removeprefix("ROOT ").split(" = ", 1)
        if len(parts) == 2 and parts[0].startswith("%"):
            types[parts[0]] = parts[1].split("[", 1)[0]
    n = 0
    for line in _product_lines(text):
        ops = line.split("(", 1)[1].split(")", 1)[0].split(", ")
        n += all(types.get(o) == "bf16" for o in ops[:2])
    return n


def test_rave_bfloat16_is_close_to_float32_with_bf16_products():
    cfg = config.from_dict({"rave": "untrained:v2_small", "precision": "bfloat16"})
    g32 = generators.build_rave(cfg.replace(precision="float32"))
    g16 = generators.build_rave(cfg, platform="cpu")
    assert g16.params["L0_w"].dtype == jnp.bfloat16 and g16.params["pqmf_w"].dtype == jnp.float32
    z = jnp.asarray(np.random.default_rng(1).normal(size=(2, 8, 16)), jnp.float32)
    key = jax.random.key(0)
    a32 = np.asarray(jax.jit(g32.decode)(g32.params, z, key))
    a16 = np.asarray(jax.jit(g16.decode)(g16.params, z, key))
    assert a16.dtype == np.float32 and np.all(np.isfinite(a16))
    assert cosine(a16, a32).min() > 0.999
    text = _optimised(g16.decode, g16.params, z, key)
    assert _bf16_products(text) >= 20  # every generator convolution, one bf16 dot per tap
    convs = [line for line in _product_lines(text) if " convolution(" in line]
    assert len(convs) <= 1  # only the float32 PQMF synthesis stays a convolution
    # float32: every product at HIGHEST (TPU would otherwise multiply in one bf16 pass)
    text32 = jax.jit(g32.decode).lower(g32.params, z, key).as_text()
    convs32 = [line for line in text32.splitlines() if "stablehlo.convolution" in line]
    assert len(convs32) >= 20 and all("precision HIGHEST" in line for line in convs32) and "bf16" not in text32


def test_rave_bfloat16_on_tpu_hands_xla_bf16_convolutions():
    from lvns_jax.models import rave

    dec = rave.untrained("v2_small")
    z = jnp.zeros((1, 8, 8))
    text = jax.jit(dec.pure_decode(noise=False, policy=BF16_XLA)).lower(dec.params, z, None).as_text()
    assert "stablehlo.convolution" in text and "bf16" in text
    convs = [line for line in text.splitlines() if "stablehlo.convolution" in line]
    assert all("bf16" in line for line in convs[:-1])  # last: the float32 PQMF


@pytest.mark.slow  # a cheaper sibling runs by default (see the module's other tests)
def test_vggish_bfloat16_is_close_to_float32_with_bf16_products():
    cfg = config.from_dict({"precision": "bfloat16"})
    e32 = embedders.build_vggish(cfg.replace(precision="float32"), "untrained", 16000, 16000)
    e16 = embedders.build_vggish(cfg, "untrained", 16000, 16000, platform="cpu")
    assert e16.params["fc1_1"]["kernel"].dtype == jnp.bfloat16 and e16.params["fc1_1"]["bias"].dtype == jnp.float32
    t = np.arange(16000) / 16000
    audio = jnp.asarray(np.stack([0.5 * np.sin(2 * np.pi * 440 * t),
                                  np.random.default_rng(0).normal(size=16000) * 0.1]), jnp.float32)
    y32 = np.asarray(jax.jit(e32.embed)(e32.params, audio))
    y16 = np.asarray(jax.jit(e16.embed)(e16.params, audio))
    assert y16.dtype == np.float32 and np.all(np.isfinite(y16))
    assert cosine(y16, y32).min() > 0.999
    text = _optimised(e16.embed, e16.params, audio)
    assert _bf16_products(text) >= 6 * 9 - 9 + 3  # convolutions as per-tap bf16 dots, 3 dense layers
    assert not [line for line in _product_lines(text) if " convolution(" in line]
    g = jax.grad(lambda a: jnp.sum(e16.embed_grad(e16.params, a)))(audio)  # gradient emitter path
    assert np.all(np.isfinite(np.asarray(g)))


@pytest.mark.slow  # a cheaper sibling runs by default (see the module's other tests)
def test_panns_bfloat16_is_close_to_float32_with_bf16_products():
    from lvns_jax.models import panns

    cfg = config.from_dict({"embedder": "untrained:panns", "precision": "bfloat16"})
    n = panns.min_samples(32000)
    e32 = embedders.build_panns(cfg.replace(precision="float32"), "untrained", 32000, n)
    e16 = embedders.build_panns(cfg, "untrained", 32000, n, platform="cpu")
    audio = jnp.asarray(np.random.default_rng(2).normal(size=(2, n)) * 0.1, jnp.float32)
    y32 = np.asarray(jax.jit(e32.embed)(e32.params, audio))
    y16 = np.asarray(jax.jit(e16.embed)(e16.params, audio))
    assert np.all(np.isfinite(y16)) and cosine(y16, y32).min() > 0.999
    assert _bf16_products(_optimised(e16.embed, e16.params, audio)) >= 12
