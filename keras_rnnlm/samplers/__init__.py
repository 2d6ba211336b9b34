"""Text generation with O(1)-per-token stateful decoding: greedy, sampling, top-k, top-p, beam.

One sampler per module, keras-hub style: ``base.Sampler`` owns the generation loop and the
explicit random draw, each strategy overrides ``get_next_token`` (``BeamSampler`` the loop).
``generation`` holds the entry points (``generate``, ``generate_text``, ``generate_with_model``),
whose compiled functions are cached on the model. The SavedModel export runs these same classes.
"""

from keras_rnnlm.samplers.base import (
    DEFAULT_SUPPRESSED_IDS,
    Sampler,
    decode_step,
    draw,
    prefill,
    stateless_uniform,
)
from keras_rnnlm.samplers.beam_sampler import BeamSampler
from keras_rnnlm.samplers.generation import (
    DEFAULT_NEW_TOKENS,
    SAMPLERS,
    generate,
    generate_text,
    generate_with_model,
    get_sampler,
    make_generate_fn,
    pad_prompts,
    resolve_max_new_tokens,
)
from keras_rnnlm.samplers.greedy_sampler import GreedySampler
from keras_rnnlm.samplers.random_sampler import RandomSampler
from keras_rnnlm.samplers.top_k_sampler import TopKSampler
from keras_rnnlm.samplers.top_p_sampler import TopPSampler

__all__ = [
    "DEFAULT_NEW_TOKENS",
    "DEFAULT_SUPPRESSED_IDS",
    "SAMPLERS",
    "BeamSampler",
    "GreedySampler",
    "RandomSampler",
    "Sampler",
    "TopKSampler",
    "TopPSampler",
    "decode_step",
    "draw",
    "generate",
    "generate_text",
    "generate_with_model",
    "get_sampler",
    "make_generate_fn",
    "pad_prompts",
    "prefill",
    "resolve_max_new_tokens",
    "stateless_uniform",
]
