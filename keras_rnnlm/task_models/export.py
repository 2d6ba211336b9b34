"""``export_task_model``: any task model as a TensorFlow SavedModel with one signature."""

import keras
import tensorflow as tf

from keras_rnnlm.tf_logging import save_saved_model


class TaskModelServer(tf.Module):
    """The tf.Module saved by ``export_task_model``: the model and one serving signature."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.serve = tf.function(
            lambda token_ids: model.serving_outputs(token_ids),
            input_signature=[tf.TensorSpec((None, None), tf.int32, name="token_ids")],
        )


def export_task_model(model: keras.Model, export_dir):
    """Save ``model`` (any built model of ``keras_rnnlm.task_models``) as a SavedModel.

    The ``serving_default`` signature takes int32 ``token_ids`` ``(batch, time)`` (0 = padding)
    and returns the model's ``serving_outputs`` (e.g. ``logits`` and ``tags`` for a tagger).
    Reload with ``tf.saved_model.load(export_dir).signatures["serving_default"]``; it needs
    TensorFlow only, not Keras or this package.

    Args:
        model: a built ``RNNEncoder``, ``SequenceTagger``, ``SentenceClassifier`` or
            ``BidirectionalLanguageModel``.
        export_dir: directory to write (created).

    Returns:
        ``export_dir``.

    Example:

    >>> export_task_model(tagger, "/tmp/tagger_export")
    """
    if not model.built:
        raise ValueError("The model is not built: call it on data or train it before exporting.")
    server = TaskModelServer(model)
    save_saved_model(server, export_dir, signatures={"serving_default": server.serve})
    return export_dir
