"""Run by tests/distribute_test.py in a fresh process (logical devices must be set before TF
starts): one training step of the same model on the same global batch, on one device and under
MirroredStrategy on 2 logical CPUs; prints the largest weight difference as JSON."""

import json
import sys

import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)

import keras  # noqa: E402

from keras_rnnlm.models import RNNLanguageModel  # noqa: E402
from keras_rnnlm.training import compile_language_model  # noqa: E402

optimizer_kind = sys.argv[1]  # ours | keras | cli
if optimizer_kind == "cli":  # keras-rnnlm train --strategy mirrored, end to end
    from keras_rnnlm.cli import main

    sys.exit(main(["train", "--strategy", "mirrored", *sys.argv[2:]]))
jit_compile = sys.argv[2] == "jit"  # XLA cannot compile a step on 2 devices: "nojit"
CLIP = 0.05  # small enough that every step is clipped

# a global batch of 4 sentences; the two halves (one per replica) hold different token counts
rng = np.random.default_rng(0)
lengths = [9, 8, 3, 2]
inputs = np.zeros((4, 9), np.int32)
for row, n in enumerate(lengths):
    inputs[row, :n] = rng.integers(1, 30, n)
targets = np.where(inputs > 0, np.roll(inputs, -1, axis=1), 0)
targets[:, -1] = 0
targets = np.where(inputs > 0, np.maximum(targets, 1), 0).astype(np.int32)


def one_step(strategy):
    keras.utils.set_random_seed(1)
    with strategy.scope():
        model = RNNLanguageModel(30, units=16, embedding_dim=8, num_layers=2)
        model.build((None, None))
        if optimizer_kind == "ours":
            compile_language_model(model, "sgd", 1.0, CLIP, jit_compile=jit_compile)
        else:
            compile_language_model(
                model,
                keras.optimizers.SGD(1.0, global_clipnorm=CLIP),
                jit_compile=jit_compile,
            )
    before = [v.numpy().copy() for v in model.trainable_variables]
    data = tf.data.Dataset.from_tensor_slices((inputs, targets)).batch(4)
    history = model.fit(data, epochs=1, verbose=0)
    after = [v.numpy() for v in model.trainable_variables]
    update = np.concatenate([(a - b).ravel() for a, b in zip(after, before, strict=True)])
    return update, history.history["loss"][0]


single, single_loss = one_step(tf.distribute.get_strategy())
mirrored_strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
mirrored, mirrored_loss = one_step(mirrored_strategy)
print(
    "RESULT "
    + json.dumps(
        {
            "replicas": mirrored_strategy.num_replicas_in_sync,
            "max_abs_difference": float(np.max(np.abs(single - mirrored))),
            "single_update_norm": float(np.linalg.norm(single)),
            "mirrored_update_norm": float(np.linalg.norm(mirrored)),
            "single_loss": single_loss,
            "mirrored_loss": mirrored_loss,
        }
    )
)
