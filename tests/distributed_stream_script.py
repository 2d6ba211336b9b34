"""Run by tests/distributed_stream_test.py in a fresh process (logical devices must be set
before TensorFlow starts): stream mode (stateful, truncated BPTT) for 20 clipped steps on one
device and under MirroredStrategy on 2 logical CPUs; prints the differences as JSON.

Usage: ``python distributed_stream_script.py sgd|adam``
"""

import json
import sys

import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)

import keras  # noqa: E402

from keras_rnnlm.data.pipelines import stream_batches  # noqa: E402
from keras_rnnlm.distributed_stream import (  # noqa: E402
    distribute_stream_dataset,
    replica_states,
)
from keras_rnnlm.losses import MaskedLanguageModelLoss  # noqa: E402
from keras_rnnlm.models import RNNLanguageModel  # noqa: E402
from keras_rnnlm.training import ResetStatesCallback, compile_language_model  # noqa: E402

OPTIMIZER = sys.argv[1]
LEARNING_RATE = {"sgd": 1.0, "adam": 0.01}[OPTIMIZER]
CLIP = 0.05  # global norm, far below the gradient norm of this model: every step is clipped
VOCABULARY, BATCH, STEPS, NUM_BATCHES = 40, 4, 6, 20
# Models use output_dtype="float32": "auto" picks bfloat16 output matmuls on CPUs with
# AVX512-BF16, whose rounding depends on how a batch is split, and this compares the splits.

rng = np.random.default_rng(0)
stream = rng.integers(1, VOCABULARY, BATCH * (STEPS * NUM_BATCHES + 1))
inputs, targets = stream_batches(stream, BATCH, STEPS)
assert inputs.shape == (NUM_BATCHES, BATCH, STEPS)
targets[1, 0, :3] = 0  # some padding in one replica's rows only: the token counts differ


class RecordSteps(keras.callbacks.Callback):
    """The global norm of every step's weight update (SGD: learning rate x clip when the
    clip binds)."""

    def on_train_begin(self, logs=None):
        self.norms, self.before = [], [v.numpy() for v in self.model.trainable_variables]

    def on_train_batch_end(self, batch, logs=None):
        after = [v.numpy() for v in self.model.trainable_variables]
        self.norms.append(
            float(np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(after, self.before))))
        )
        self.before = after


def train(strategy, initial, data_kind, jit_compile=False):
    with strategy.scope():
        model = RNNLanguageModel(
            VOCABULARY, units=16, embedding_dim=8, stateful=True, output_dtype="float32"
        )
        model.build((BATCH, None))
        if initial is not None:
            model.set_weights(initial)
        compile_language_model(model, OPTIMIZER, LEARNING_RATE, CLIP, jit_compile=jit_compile)
    start = model.get_weights(), [v.numpy() for v in model.trainable_variables]
    if data_kind == "rows":
        data = distribute_stream_dataset(strategy, inputs, targets)
    else:  # Keras's own distribution of the global batches
        data = tf.data.Dataset.from_tensor_slices((inputs, targets))
    record = RecordSteps()
    history = model.fit(
        data,
        epochs=1,
        steps_per_epoch=NUM_BATCHES,
        callbacks=[ResetStatesCallback(), record],
        verbose=0,
        shuffle=False,
    )
    weights = [v.numpy() for v in model.trainable_variables]
    states = [s for layer in replica_states(model) for s in layer]
    return start, weights, states, history.history, record.norms


def compare(reference, other):
    _, w1, s1, h1, _ = reference
    _, w2, s2, h2, _ = other
    scaled = max(
        float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(a))))
        for a, b in zip(w1, w2, strict=True)
    )
    return {
        "max_weight_difference_scaled": scaled,
        "max_state_difference": max(
            float(np.max(np.abs(a - b))) for a, b in zip(s1, s2, strict=True)
        ),
        "loss_difference": abs(h1["loss"][0] - h2["loss"][0]),
        "perplexity_difference": abs(h1["perplexity"][0] - h2["perplexity"][0]),
    }


def first_gradient_norm(initial):
    """The unclipped global gradient norm of the first step (zero states, batch 0)."""
    model = RNNLanguageModel(
        VOCABULARY, units=16, embedding_dim=8, stateful=True, output_dtype="float32"
    )
    model.build((BATCH, None))
    model.set_weights(initial)
    with tf.GradientTape() as tape:
        loss = MaskedLanguageModelLoss()(targets[0], model(inputs[0]))
    grads = tape.gradient(loss, model.trainable_variables)
    return float(tf.linalg.global_norm([tf.convert_to_tensor(g) for g in grads]))


def variable_shapes(strategy):
    """Shapes of every saved/checkpointed variable of a stream model built under strategy."""
    with strategy.scope():
        model = RNNLanguageModel(
            VOCABULARY, units=16, embedding_dim=8, stateful=True, output_dtype="float32"
        )
        model.build((BATCH, None))
    return [tuple(v.shape) for v in model.variables]


keras.utils.set_random_seed(1)
single = train(tf.distribute.get_strategy(), None, "rows")
initial = single[0][0]
mirrored_strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
mirrored = train(mirrored_strategy, initial, "rows")
keras_split = train(mirrored_strategy, initial, "global")
fast = train(tf.distribute.get_strategy(), initial, "rows", jit_compile="auto")
result = {
    "optimizer": OPTIMIZER,
    "replicas": mirrored_strategy.num_replicas_in_sync,
    "steps": len(single[4]),
    "update_norms": single[4],
    "state_norm": float(np.sqrt(sum(np.sum(s**2) for s in single[2]))),
    "max_weight_change": max(float(np.max(np.abs(a - b))) for a, b in zip(single[0][1], single[1])),
    "mirrored_rows": compare(single, mirrored),
    "mirrored_keras_split": compare(single, keras_split),
    "single_fast_path": compare(single, fast),
    "first_gradient_norm": first_gradient_norm(initial),
    "clip": CLIP,
    "learning_rate": LEARNING_RATE,
    "same_saved_variables": variable_shapes(tf.distribute.get_strategy())
    == variable_shapes(mirrored_strategy),
}
print("RESULT " + json.dumps(result))
