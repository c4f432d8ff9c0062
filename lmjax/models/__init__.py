"""Model registry: `config.model_name` -> (family class, frozen config class).

Every family subclasses `models.base.Family` (the interface the trainer and tasks use).
`register` adds one at run time (a test's toy family, or a user's own outside the package).
"""

import dataclasses

from lmjax.errors import UserError
from lmjax.models import (
    adaptive_span,
    base,
    fast_weights,
    sha_rnn,
    sru,
    sru_pp,
    story_of_heads,
    transformer_xl,
)

MODELS = {
    "sha_rnn": (sha_rnn.ShaRNN, sha_rnn.ShaRNNConfig),
    "sru_pp": (sru_pp.SRUpp, sru_pp.SRUppConfig),  # SRU++ (plain SRU: "sru", below)
    "sru": (sru.SRULM, sru.SRUConfig),
    "transformer_xl": (transformer_xl.TransformerXL, transformer_xl.TransformerXLConfig),
    "adaptive_span": (adaptive_span.AdaptiveSpan, adaptive_span.AdaptiveSpanConfig),
    "fast_weights": (fast_weights.FastWeightsLM, fast_weights.FastWeightsConfig),
    "story_of_heads": (story_of_heads.StoryOfHeads, story_of_heads.StoryOfHeadsConfig),
}


def register(name, cls, config_cls):
    """Adds family `cls` (a `base.Family`) with its frozen dataclass config under `name`."""
    if not issubclass(cls, base.Family):
        raise TypeError(f"{cls.__name__} must subclass lmjax.models.base.Family")
    MODELS[name] = (cls, config_cls)


def get_model(config):
    """Builds the model named by `config.model_name` from the fields of `config.model`."""
    if config.model_name not in MODELS:
        raise UserError(f"model_name={config.model_name!r} is unknown; known: {sorted(MODELS)}")
    cls, cfg_cls = MODELS[config.model_name]
    fields = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(config.model.keys()) - fields)
    if unknown:
        raise UserError(f"config.model has unknown field(s) {unknown} for {config.model_name}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in config.model.items()}
    for name, value in values.items():  # every family names its dropout rates "*dropout*"
        is_rate = isinstance(value, float | int) and not isinstance(value, bool)
        if "dropout" in name and is_rate and not 0 <= value < 1:
            raise UserError(f"model.{name}={value} must be in [0, 1)")
    return cls(cfg_cls(**values))
