"""Other uses of RNNs, built from the same layers as the language model.

* ``RNNEncoder``: token ids -> per-token states and a sentence vector (final state, or mean /
  max pooling over the real tokens). It may be bidirectional: it sees the whole input.
* ``SequenceTagger``: encoder -> per-token softmax over tags (tag 0 = padding, never counted).
* ``SentenceClassifier``: encoder -> sentence vector -> softmax over classes.
* ``BidirectionalLanguageModel`` (ELMo-style): a forward LM and a backward LM sharing the
  embedding, trained jointly. The forward direction predicts ``x_{t+1}`` from ``x_1..x_t``, the
  backward direction predicts ``x_{t-1}`` from ``x_t..x_n``; neither ever sees the token it
  predicts (unlike a ``Bidirectional`` layer, which cannot be a language model).

Every model reads int token ids ``(batch, time)`` right-padded with 0 and masks the padding in
the recurrence, so padding never changes a real position's output. ``export_task_model`` saves
any of them as a TensorFlow SavedModel with a ``serving_default`` signature.

Modules: ``encoder`` (``RNNEncoder``, pooling), ``heads`` (tagger, classifier),
``bidirectional_lm``, ``compiling`` (``compile_*``, optimizers from ``make_optimizer``) and
``export``; every name stays importable from ``keras_rnnlm.task_models``. The embedding +
recurrent stack is ``keras_rnnlm.backbone``'s, shared with ``RNNLanguageModel``.
"""

from keras_rnnlm.task_models.bidirectional_lm import (
    BidirectionalLanguageModel,
    bidirectional_lm_dataset,
    bidirectional_lm_targets,
    evaluate_bidirectional_perplexity,
)
from keras_rnnlm.task_models.compiling import (
    compile_bidirectional_lm,
    compile_classifier,
    compile_tagger,
    task_optimizer,
)
from keras_rnnlm.task_models.encoder import (
    ENCODER_ARGUMENTS,
    POOLINGS,
    RNNEncoder,
    encoder_config,
    pool,
    sequence_lengths,
)
from keras_rnnlm.task_models.export import TaskModelServer, export_task_model
from keras_rnnlm.task_models.heads import SentenceClassifier, SequenceTagger

__all__ = [
    "ENCODER_ARGUMENTS",
    "POOLINGS",
    "BidirectionalLanguageModel",
    "RNNEncoder",
    "SentenceClassifier",
    "SequenceTagger",
    "TaskModelServer",
    "bidirectional_lm_dataset",
    "bidirectional_lm_targets",
    "compile_bidirectional_lm",
    "compile_classifier",
    "compile_tagger",
    "encoder_config",
    "evaluate_bidirectional_perplexity",
    "export_task_model",
    "pool",
    "sequence_lengths",
    "task_optimizer",
]
