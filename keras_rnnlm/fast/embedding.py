"""The embedding lookup on the fast path: the rows gathered straight from the variable.

The reference is ``keras.layers.Embedding`` (``ops.take(embeddings, ids)``), which first reads
the whole matrix (``ReadVariableOp``) and then gathers the rows. Once the fast path's SGD has
updated the matrix's rows in place (``fast.sgd``: ``ResourceScatterSub``), TensorFlow keeps the
variable in copy-on-read mode, so that read copies the whole matrix at every step (0.8-0.9 ms
for PTB-small's 10,000 x 200 at the start of each step, before anything else can run).
``tf.gather`` on the variable itself is one ``ResourceGather`` that copies only the batch's rows.

``tests/fast_test.py`` checks the lookup and its gradient against the Keras layer and that the
fast path's training step gathers from the variable.
"""

import keras
import tensorflow as tf


def _gathers_from_variable(embedding: keras.layers.Embedding) -> bool:
    """Whether the plain Keras lookup is ``take`` on one float variable, nothing else."""
    return (
        type(embedding) is keras.layers.Embedding
        and embedding.built
        and not getattr(embedding, "lora_enabled", False)
        and getattr(embedding, "quantization_mode", None) is None
        and embedding.embeddings.dtype == embedding.compute_dtype
    )


def embedding_lookup(embedding: keras.layers.Embedding, token_ids):
    """``embedding(token_ids)`` as one ``ResourceGather`` on the embedding variable.

    Args:
        embedding: a built ``keras.layers.Embedding``; any other layer, a quantized or LoRA
            embedding, or a dtype policy that casts is called as it is (the reference).
        token_ids: int ``(batch, time)``.

    Returns:
        ``(batch, time, embedding_dim)``, equal to ``embedding(token_ids)``; the gradient with
        respect to the matrix is the same ``IndexedSlices``.

    Example:

    >>> vectors = embedding_lookup(model.embedding, tf.constant([[5, 7, 0]]))
    """
    if not _gathers_from_variable(embedding):
        return embedding(token_ids)
    if token_ids.dtype not in (tf.int32, tf.int64):
        token_ids = tf.cast(token_ids, tf.int32)
    return tf.gather(embedding.embeddings.value, token_ids)
