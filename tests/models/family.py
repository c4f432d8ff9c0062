"""Helpers every family's model tests share (not a test module)."""

import jax


def tiny_model(config_module, **overrides):
    """The family's model at its config's `tiny` variant, with `model.*` fields overridden."""
    from lmjax import models

    config = config_module.get_config("tiny")
    for k, v in overrides.items():
        config.model[k] = v
    return models.get_model(config)


def perturbed_params(model, tokens, seed=0, scale=0.3):
    """Initial parameters plus N(0, scale²) noise everywhere: zero gates and biases, unit gains
    and α = 0 at init would hide bugs that only show with trained weights."""
    params = jax.jit(lambda key: model.init(key, tokens, None, train=False)["params"])(
        jax.random.PRNGKey(seed)
    )
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    leaves = [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)]
    return jax.tree.unflatten(treedef, leaves)


def jit_apply(model, params):
    """(tokens, carry) -> (logits, carry, aux) in eval mode, jitted."""
    return jax.jit(lambda x, c: model.apply({"params": params}, x, c, train=False))


def random_tokens(b, t, seed=0, vocab=256):
    return jax.random.randint(jax.random.PRNGKey(seed), (b, t), 0, vocab)
