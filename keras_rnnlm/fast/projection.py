"""A recurrent layer's input projection with bfloat16 matmul operands, for the training step.

The reference is ``cell.project_inputs(x)`` (``x @ kernel + bias`` in float32,
``keras_rnnlm.cells``). On the fast path's training step, on a device where bfloat16 matmuls
are fast, the projection's three products (forward, and its input and kernel gradients) get
bfloat16 operands through ``fast.output_layer.low_precision_dense`` (float32 weights, result
and bias; oneDNN accumulates in float32), as ``torch.autocast`` does for an ``nn.LSTM``'s
products. The time loop's recurrent-kernel gradient product follows the same dtype
(``fast.time_loop``); the per-step recurrent products stay float32.

``tests/layers_test.py`` checks the projection against TensorFlow's automatic
differentiation of the same formula and a bfloat16-path layer against the float32 reference
within the rounding of bfloat16 operands.
"""

import tensorflow as tf

from keras_rnnlm.fast.output_layer import low_precision_dense


def _plain_projection(cell) -> bool:
    """Whether ``cell.project_inputs`` is the base class's ``inputs @ kernel + bias``."""
    from keras_rnnlm.cells import _RecurrentCell

    return (
        type(cell).project_inputs is _RecurrentCell.project_inputs
        and getattr(cell, "use_bias", False)
        and len(cell.bias.shape) == 1
    )


def project_inputs(cell, inputs, dtype="float32"):
    """``cell.project_inputs(inputs)`` with ``dtype`` matmul operands.

    Args:
        cell: a built ``keras_rnnlm.cells`` cell.
        inputs: float32 ``(batch, time, features)``.
        dtype: ``"float32"`` (the reference, unchanged) or ``"bfloat16"``. Cells whose
            projection is not ``inputs @ kernel + bias`` (the GRU's, a cell without bias)
            keep the reference.

    Returns:
        float32 ``(batch, time, gates * units)``.

    Example:

    >>> projected = project_inputs(layer.cell, tf.ones((2, 3, 8)), "bfloat16")
    """
    if dtype == "float32" or not _plain_projection(cell):
        return cell.project_inputs(inputs)
    shape = tf.shape(inputs)
    flat = tf.reshape(inputs, [-1, inputs.shape[-1]])
    projected = low_precision_dense(flat, cell.kernel, cell.bias, dtype)
    return tf.reshape(projected, tf.concat([shape[:-1], [-1]], axis=0))
