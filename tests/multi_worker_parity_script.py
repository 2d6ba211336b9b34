"""Run by tests/multi_worker_test.py (one fresh process per worker, or one for the single
device): 20 training steps of a tiny LSTM language model on 20 fixed global batches (unequal
padding, dropout 0, global-norm clipping active at every step), with SGD then Adam; writes
the trained weights to an ``.npz`` file.

    python multi_worker_parity_script.py single OUT.npz [auto|reference]
    TF_CONFIG=... python multi_worker_parity_script.py worker OUT.npz   # on every worker

Only the chief writes ``OUT.npz`` under ``worker``. With ``single`` the file also holds the
norm of every step's update (``<optimizer>_step_norms``): with SGD at learning rate 1 a
clipped step moves the weights by exactly the clip norm.
"""

import sys

import keras
import numpy as np
import tensorflow as tf

from keras_rnnlm.distribute import get_strategy, is_chief
from keras_rnnlm.models import RNNLanguageModel
from keras_rnnlm.training import compile_language_model

role, out_path = sys.argv[1], sys.argv[2]
implementation = sys.argv[3] if len(sys.argv) > 3 else "auto"
STEPS, GLOBAL_BATCH, VOCABULARY, CLIP = 20, 4, 30, 0.05
# Models use output_dtype="float32": "auto" picks bfloat16 output matmuls on CPUs with
# AVX512-BF16, whose rounding depends on how a batch is split, and this compares the splits.
SETTINGS = {"sgd": 1.0, "adam": 0.01}  # learning rates; CLIP is below every gradient norm

rng = np.random.default_rng(0)
rows = STEPS * GLOBAL_BATCH
lengths = rng.integers(2, 10, rows)  # the two halves of a batch hold different token counts
inputs = np.zeros((rows, 9), np.int32)
for row, n in enumerate(lengths):
    inputs[row, :n] = rng.integers(1, VOCABULARY, n)
targets = np.where(inputs > 0, np.roll(inputs, -1, axis=1), 0)
targets[:, -1] = 0
targets = np.where(inputs > 0, np.maximum(targets, 1), 0).astype(np.int32)


class StepNorms(keras.callbacks.Callback):
    """The norm of every step's weight update."""

    def on_train_begin(self, logs=None):
        self.norms, self.last = [], self._flat()

    def _flat(self):
        return np.concatenate([v.numpy().ravel() for v in self.model.trainable_variables])

    def on_train_batch_end(self, batch, logs=None):
        now = self._flat()
        self.norms.append(float(np.linalg.norm(now - self.last)))
        self.last = now


strategy = get_strategy("multi_worker" if role == "worker" else "default")
results = {}
for optimizer, learning_rate in SETTINGS.items():
    keras.utils.set_random_seed(1)
    with strategy.scope():
        model = RNNLanguageModel(
            VOCABULARY, units=16, embedding_dim=8, num_layers=2, output_dtype="float32"
        )
        model.build((None, None))
        jit = False if role == "worker" or implementation == "reference" else "auto"
        compile_language_model(model, optimizer, learning_rate, CLIP, jit_compile=jit)
    data = tf.data.Dataset.from_tensor_slices((inputs, targets)).batch(GLOBAL_BATCH)
    norms = StepNorms()
    model.fit(data, epochs=1, verbose=0, callbacks=[norms] if role == "single" else [])
    for i, variable in enumerate(model.trainable_variables):
        results[f"{optimizer}_{i}"] = variable.numpy()
    results[f"{optimizer}_step_norms"] = np.asarray(norms.norms if role == "single" else [])
    results[f"{optimizer}_replicas"] = np.asarray(strategy.num_replicas_in_sync)
if role == "single" or is_chief():
    np.savez(out_path, **results)
print("DONE", role)
