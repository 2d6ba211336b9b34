"""How tests/data/main_b65c9e6_* were made (with the code of commit b65c9e6, before the
`implementation` option): run from a checkout of that commit,

    PYTHONPATH=<checkout> python tests/data/make_main_b65c9e6_fixtures.py tests/data

``tests/fast_test.py`` loads them with the current code.
"""

import sys

import keras
import numpy as np

from keras_rnnlm.models import RNNLanguageModel
from keras_rnnlm.training import compile_language_model

out = sys.argv[1]
keras.utils.set_random_seed(0)
x = np.random.default_rng(0).integers(1, 12, size=(2, 6)).astype("int32")
for name, dtype, jit in (
    ("main_b65c9e6_recurrence_bf16.keras", "bfloat16", "recurrence"),
    ("main_b65c9e6_default.keras", "float32", True),
):
    m = RNNLanguageModel(
        12, units=4, embedding_dim=4, num_layers=1, init_scale=0.1, output_dtype=dtype
    )
    compile_language_model(m, "sgd", 1.0, 5.0, jit_compile=jit)
    m.fit(x[:, :-1], x[:, 1:], epochs=1, verbose=0)
    m.save(f"{out}/{name}")
    np.save(f"{out}/{name[:-6]}_logits.npy", np.asarray(m(x)))
np.save(f"{out}/main_b65c9e6_inputs.npy", x)
