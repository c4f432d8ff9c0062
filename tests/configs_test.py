"""Every experiment config: all variants build, and `tiny` initialises and takes a train step."""

import importlib
import pathlib

import jax
import numpy as np
import pytest

from lmjax import bench, models, sharding

CONFIGS = sorted(
    p.stem
    for p in (pathlib.Path(__file__).resolve().parents[1] / "configs").glob("*.py")
    if p.stem not in ("__init__", "common")
)


# (config file, variant): each file's `tiny`, plus the other tiny variants it lists.
TINY = [
    (name, variant)
    for name in CONFIGS
    for variant in getattr(importlib.import_module(f"configs.{name}"), "TINY_VARIANTS", ("tiny",))
]


@pytest.mark.parametrize("name,variant", TINY)
def test_tiny_variant_takes_a_step(name, variant):
    """Through the benchmark's set-up, which is the trainer's (task, adapted model, state,
    carry, jitted step), on the task's synthetic batch."""
    module = importlib.import_module(f"configs.{name}")
    config = module.get_config(variant)
    assert config.train.batch_size <= 8 and config.train.seq_len <= 32
    mesh = sharding.make_mesh(jax.devices()[:2])
    task, model, state, carry, step = bench.setup(config, mesh)
    batch = sharding.shard_host_batch(mesh, task.synthetic_batch(model))
    state, carry, metrics = step(state, carry, batch)
    assert np.isfinite(float(metrics["loss_sum"])) and int(state.step) == 1


def test_sha_rnn_variants_follow_the_paper():
    from configs import sha_rnn

    default = sha_rnn.get_config()
    assert (default.model.num_layers, default.model.d_model, default.model.d_ff) == (4, 1024, 4096)
    assert default.model.attn_layers == (2,) and default.model.mem_len == 5000 - 1024
    assert (default.train.batch_size, default.train.seq_len) == (16, 1024)
    assert (default.optim.name, default.optim.learning_rate, default.optim.warmup_steps) == (
        "lamb",
        2e-3,
        800,
    )
    assert (default.optim.grad_clip, default.optim.weight_decay) == (0.25, 1.2e-6)
    assert sha_rnn.get_config("enwik8_full_attn").model.attn_layers == (0, 1, 2, 3)
    assert sha_rnn.get_config("enwik8_finetune").optim.learning_rate == 1e-3
    cpu = sha_rnn.get_config("cpu")
    assert (cpu.model.d_model, cpu.model.d_ff, cpu.model.mem_len, cpu.model.attn_layers) == (
        256,
        1024,
        512,
        (2,),
    )
    assert (cpu.train.batch_size, cpu.train.seq_len, cpu.data.name) == (8, 256, "stdlib")
    n = sum(
        x.size
        for x in jax.tree.leaves(
            jax.eval_shape(
                lambda: models.get_model(default).init(
                    jax.random.PRNGKey(0), np.zeros((1, 4), np.int32), None, train=False
                )
            )
        )
    )
    # The reference's 53,798,093 counts 205 vocabulary rows and its dead parameters (lnout,
    # unused lnmid/lnmem, qkvs, r_gate, the second LSTM bias); ours has 256 byte rows.
    assert n == 53_798_093 - 205 * 1025 + 256 * 1025 - _dead_reference_params(1024)


def _dead_reference_params(e):
    lnout = 4 * 2 * e
    unused_mid_mem = 3 * 2 * 2 * e  # three blocks without attention own lnmid and lnmem
    qkvs_rgate = 3 * e + e
    second_bias = 4 * 4 * e  # b_hh per LSTM (we store b_ih + b_hh as one vector)
    return lnout + unused_mid_mem + qkvs_rgate + second_bias


def test_story_of_heads_variants_follow_the_paper():
    from configs import story_of_heads as soh

    base = soh.get_config("wmt_en_ru")
    m, o = base.model, base.optim
    assert (m.d_model, m.num_heads, m.d_ff, m.num_layers) == (512, 8, 2048, 6)
    assert (base.data.src_lang, base.data.tgt_lang, base.data.vocab_size) == ("en", "ru", 32000)
    assert (o.b2, o.eps, o.schedule, o.warmup_steps, o.grad_clip) == (
        0.998,
        1e-9,
        "rsqrt",
        16000,
        0,
    )
    assert abs(o.learning_rate - 1.40e-3) < 1e-5 and base.data.batch_len == 4000
    assert soh.get_config("wmt_en_ru_prune").model.concrete_heads == (
        "enc-self",
        "dec-self",
        "dec-enc",
    )
    enc = soh.get_config("wmt_en_de_prune_enc")
    assert enc.model.concrete_heads == ("enc-self",) and enc.optim.trainable == ("emb_inp*", "enc*")
    assert (
        enc.model.gate_coef == 0.1
        and soh.get_config("multi30k_prune,lam=0.2").model.gate_coef == 0.2
    )
    with pytest.raises(ValueError, match="unknown variant"):
        soh.get_config("wmt_en_xx_prune")
