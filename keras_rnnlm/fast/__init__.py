"""The fast path: performance machinery kept apart from the reference implementation.

Design note
-----------
**Reference path.** ``keras_rnnlm.cells`` (one time step of each cell, the lecture's
equations in ``keras.ops``), ``keras_rnnlm.recurrent.Recurrent._time_loop`` (a plain
``tf.while_loop`` over ``cell.step``, differentiated by TensorFlow), ``keras_rnnlm.models``
(embedding -> ``StackedRecurrent`` -> dense logits) and ``keras_rnnlm.losses`` (masked mean
cross-entropy). With ``implementation="reference"`` nothing from this package runs, and
Keras's own ``train_step`` trains the model.

**Fast path** (this package, one concern per module):

* ``time_loop``: each recurrent layer's time loop XLA-compiled, forward and backward, with a
  hand-written backward through time (``cell_backward``: LSTM and SimpleRNN) even when the
  train step itself is a TensorFlow graph; on a CPU the batch's rows run as one compiled loop
  per core (``row_parts``), concurrently, under one gradient (one transpose of the recurrent
  kernel and one kernel-gradient product over all rows);
* ``compiled_loop``: the same for any other cell (the reference loop XLA-compiled, its
  gradient recomputing the forward);
* ``output_layer``: output-layer matmuls with bfloat16 operands (float32 weights, logits and
  softmax), the output layer fused with the masked cross-entropy, its two gradient products
  run one after the other (each already uses every core);
* ``projection``: the recurrent layers' input projections with the output layer's training
  operand dtype (as ``torch.autocast`` does for an ``nn.LSTM``'s products);
* ``embedding``: the embedding rows gathered straight from the variable (no copy of the
  whole matrix per step once the sparse SGD update has put it in copy-on-read mode);
* ``xent``: the cross-entropy as a small XLA function (TensorFlow's CPU kernel is slow);
* ``sgd``: plain SGD's clip factor folded into the learning rate, sparse embedding rows;
* ``adam``: Adam as TensorFlow's one-pass ``ApplyAdam`` kernel per variable;
* ``train_step``: the one place that decides (at ``compile``) and runs (``train_step``) it;
  there the output layer's weight gradients come after every other gradient (a running
  product holds one of TensorFlow's inter-op threads, which the layers' row parts need), and
  a stateless model's batch skips its padding work: the trailing columns that are padding in
  every row, and padded targets in the output layer (``trim_trailing_padding``,
  ``real_target_positions``).

**How one is chosen.** ``RNNLanguageModel(implementation=...)`` is saved in the model's
config (old ``.keras`` files without it load as ``"auto"``):

* ``"reference"``: always the reference path;
* ``"fast"``: always the fast path (from-scratch layers only);
* ``"auto"`` (default), like ``keras.layers.LSTM`` trying cuDNN: the fast path when it is
  supported (from-scratch layers, one replica, no TPU) and ``compile`` got
  ``jit_compile="auto"`` (Keras's default); an explicit ``jit_compile=True`` (whole-step XLA)
  or ``False`` (graph, no XLA) is honoured with the reference path.

On the fast path the train step runs as a graph (``jit_compile=False`` for Keras) and each
layer's time loop is XLA-compiled. When the loss declares
``supports_fused_output_layer`` (``MaskedLanguageModelLoss`` and its subclasses) and every
metric ``supports_update_from_totals`` (``Perplexity``, ``BitsPerCharacter`` and
subclasses), the output layer, loss and metrics are one fused operation; any other loss or
metric (a stock Keras loss, ``sample_weight``...) uses Keras's train step with the fast time
loops. ``output_dtype="auto"`` (default) gives the training step's output-layer matmuls
bfloat16 operands on the fast path when the device runs them fast (a GPU, or a CPU with
AVX512-BF16/AMX), float32 otherwise, and the layers' input projections and recurrent-kernel
gradient product follow it; evaluation and inference stay float32.
``output_dtype="float32"`` is the fp32 switch. ``jit_compile="recurrence"`` is the old
spelling of the fast path (still accepted, and restored from old ``.keras`` files).

Every fast piece is tested against its reference: float32 to 1e-5, bfloat16 pieces to the
documented rounding bound and by a loss-curve comparison (``tests/fast_test.py``,
``tests/layers_test.py``, ``tests/training_test.py``).
"""

import functools

import tensorflow as tf

IMPLEMENTATIONS = ("auto", "reference", "fast")


def check_implementation(implementation: str) -> None:
    """Raise ``ValueError`` unless ``implementation`` is one of ``IMPLEMENTATIONS``."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}."
        )


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.cache
def bf16_matmul_is_fast() -> bool:
    """Whether bfloat16 matmul operands pay off here: a GPU, or a CPU with AVX512-BF16/AMX.

    Returns:
        True on such a device (the fast path then uses bfloat16 output-layer matmuls for
        ``output_dtype="auto"``), False otherwise (no CPU flag found, e.g. not Linux).

    Example:

    >>> bf16_matmul_is_fast() in (True, False)
    True
    """
    if tf.config.list_physical_devices("GPU"):
        return True
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})
