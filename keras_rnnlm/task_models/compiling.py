"""``compile_*`` helpers of the task models; their optimizers come from ``make_optimizer``."""

import keras

from keras_rnnlm.losses import MaskedLanguageModelLoss
from keras_rnnlm.metrics import MaskedAccuracy, Perplexity
from keras_rnnlm.training import make_optimizer


def task_optimizer(
    optimizer: str | keras.optimizers.Optimizer = "adam",
    learning_rate: float = 3e-3,
    clip_norm: float | None = 5.0,
    clipping: str = "global",
) -> keras.optimizers.Optimizer:
    """``optimizer`` itself when it is an optimizer instance, else
    ``keras_rnnlm.training.make_optimizer(optimizer, learning_rate, clip_norm, clipping)``.

    The library's optimizers clip the global norm exactly (after the cross-replica sum, with
    repeated embedding rows counted once), which stock Keras optimizers do not.

    Args:
        optimizer: ``"adam"``, ``"sgd"`` or a ``keras.optimizers.Optimizer``.
        learning_rate, clip_norm, clipping: as in ``make_optimizer`` (ignored for an instance).

    Returns:
        The optimizer to pass to ``model.compile``.

    Example:

    >>> task_optimizer("sgd", learning_rate=0.5, clip_norm=1.0).global_clipnorm
    1.0
    """
    if isinstance(optimizer, str):
        return make_optimizer(optimizer, learning_rate, clip_norm, clipping)
    return optimizer


def compile_tagger(
    model: keras.Model,
    optimizer: str | keras.optimizers.Optimizer = "adam",
    learning_rate: float = 3e-3,
    clip_norm: float | None = 5.0,
    clipping: str = "global",
    **kwargs,
) -> keras.Model:
    """Compile a ``SequenceTagger``: masked cross-entropy over real tags and ``MaskedAccuracy``
    (tag 0 = padding), with ``task_optimizer``'s optimizer.

    Args:
        model: the tagger.
        optimizer, learning_rate, clip_norm, clipping: see ``task_optimizer``.
        **kwargs: passed to ``model.compile`` (e.g. ``jit_compile``).

    Returns:
        ``model``, compiled.

    Example:

    >>> tagger = compile_tagger(SequenceTagger(vocabulary_size=100, num_tags=3))
    """
    model.compile(
        optimizer=task_optimizer(optimizer, learning_rate, clip_norm, clipping),
        loss=MaskedLanguageModelLoss(name="masked_tag_loss"),
        metrics=[MaskedAccuracy()],
        **kwargs,
    )
    return model


def compile_classifier(
    model: keras.Model,
    optimizer: str | keras.optimizers.Optimizer = "adam",
    learning_rate: float = 3e-3,
    clip_norm: float | None = 5.0,
    clipping: str = "global",
    **kwargs,
) -> keras.Model:
    """Compile a ``SentenceClassifier``: sparse categorical cross-entropy on logits and
    accuracy, with ``task_optimizer``'s optimizer.

    Args:
        model: the classifier.
        optimizer, learning_rate, clip_norm, clipping: see ``task_optimizer``.
        **kwargs: passed to ``model.compile``.

    Returns:
        ``model``, compiled.

    Example:

    >>> classifier = compile_classifier(SentenceClassifier(vocabulary_size=100, num_classes=2))
    """
    model.compile(
        optimizer=task_optimizer(optimizer, learning_rate, clip_norm, clipping),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        **kwargs,
    )
    return model


def compile_bidirectional_lm(
    model: keras.Model,
    optimizer: str | keras.optimizers.Optimizer = "adam",
    learning_rate: float = 3e-3,
    clip_norm: float | None = 5.0,
    clipping: str = "global",
    **kwargs,
) -> keras.Model:
    """Compile a ``BidirectionalLanguageModel``: the masked LM loss of the forward plus that
    of the backward direction, a ``Perplexity`` per direction, ``task_optimizer``'s optimizer.

    Args:
        model: the bidirectional language model.
        optimizer, learning_rate, clip_norm, clipping: see ``task_optimizer``.
        **kwargs: passed to ``model.compile``.

    Returns:
        ``model``, compiled.

    Example:

    >>> bilm = compile_bidirectional_lm(BidirectionalLanguageModel(vocabulary_size=100))
    """
    model.compile(
        optimizer=task_optimizer(optimizer, learning_rate, clip_norm, clipping),
        loss=[
            MaskedLanguageModelLoss(name="forward_lm_loss"),
            MaskedLanguageModelLoss(name="backward_lm_loss"),
        ],
        metrics=[[Perplexity(name="forward_perplexity")], [Perplexity(name="backward_perplexity")]],
        **kwargs,
    )
    return model
