"""keras_rnnlm: RNN language models on Keras 3.

Importing the package is cheap: it does not import TensorFlow or Keras. Each public name is
imported from its module the first time it is used (PEP 562 module ``__getattr__``), so
``from keras_rnnlm import RNNLanguageModel`` works as usual, while ``keras-rnnlm`` (the command
line) can configure TensorFlow's logging before TensorFlow is first imported.

Where things are:

* Reference path (the lecture's equations, read these first): ``cells`` (one time step of
  each cell), ``layers`` (the time loop, stacking, bidirectional), ``models``
  (``RNNLanguageModel``: embedding, recurrent stack, output layer), ``losses`` and ``metrics``.
* Fast path: ``keras_rnnlm.fast`` (compiled time loops with a hand-written backward, fused
  output layer and cross-entropy, low-precision matmuls, fused SGD); its module docstring is
  the design note.
* How one is chosen: ``RNNLanguageModel(implementation="auto" | "reference" | "fast")``,
  saved in the model's config; ``"auto"`` takes the fast path where it is supported.
* Around them: ``training`` (optimizers, clipping, callbacks, presets), ``distribute``
  (exact clipping across replicas), ``data/`` (vocabulary, pipelines, corpora), ``samplers``
  (one sampler per file, one generation loop), ``evaluation`` (the one exact-NLL loop used by
  evaluation and scoring), ``data/tokenizer`` (the one tokenizer, shared with the export),
  ``scoring``, ``export``, ``gradients`` and ``gradient_monitor`` (diagnostics), ``plotting``,
  ``checkpoints``, ``runs`` and ``cli`` (the ``keras-rnnlm`` command), ``constants`` (the named
  choices, no TensorFlow import).
"""

import importlib
import importlib.util

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    "GRUCell": "keras_rnnlm.cells",
    "LSTMCell": "keras_rnnlm.cells",
    "SimpleRNNCell": "keras_rnnlm.cells",
    "GradientNormMonitor": "keras_rnnlm.gradients",
    "gradient_norms_by_distance": "keras_rnnlm.gradients",
    "jacobian_spectrum": "keras_rnnlm.gradients",
    "Bidirectional": "keras_rnnlm.layers",
    "Recurrent": "keras_rnnlm.layers",
    "StackedRecurrent": "keras_rnnlm.layers",
    "MaskedLanguageModelLoss": "keras_rnnlm.losses",
    "BitsPerCharacter": "keras_rnnlm.metrics",
    "MaskedAccuracy": "keras_rnnlm.metrics",
    "Perplexity": "keras_rnnlm.metrics",
    "RNNLanguageModel": "keras_rnnlm.models",
    "BeamSampler": "keras_rnnlm.samplers",
    "GreedySampler": "keras_rnnlm.samplers",
    "RandomSampler": "keras_rnnlm.samplers",
    "Sampler": "keras_rnnlm.samplers",
    "TopKSampler": "keras_rnnlm.samplers",
    "TopPSampler": "keras_rnnlm.samplers",
    "generate": "keras_rnnlm.samplers",
    "generate_text": "keras_rnnlm.samplers",
    "generate_with_model": "keras_rnnlm.samplers",
    "load_preset": "keras_rnnlm.presets",
    "bootstrap_perplexity": "keras_rnnlm.intervals",
    "paired_bootstrap_difference": "keras_rnnlm.intervals",
    "save_to_preset": "keras_rnnlm.presets",
    "TrainingSummaries": "keras_rnnlm.summaries",
    "evaluate_stream_perplexity": "keras_rnnlm.evaluation",
    "reexport_saved_model": "keras_rnnlm.export",
    "export_saved_model": "keras_rnnlm.export",
    "score_sentences": "keras_rnnlm.scoring",
    "text_perplexity": "keras_rnnlm.scoring",
    "BidirectionalLanguageModel": "keras_rnnlm.task_models",
    "RNNEncoder": "keras_rnnlm.task_models",
    "SentenceClassifier": "keras_rnnlm.task_models",
    "SequenceTagger": "keras_rnnlm.task_models",
    "export_task_model": "keras_rnnlm.task_models",
    "MarkovSource": "keras_rnnlm.tasks",
    "RecallTask": "keras_rnnlm.tasks",
    "PRESETS": "keras_rnnlm.training",
    "EpochDecay": "keras_rnnlm.training",
    "ResetStatesCallback": "keras_rnnlm.training",
    "StopOnDivergence": "keras_rnnlm.training",
    "compile_language_model": "keras_rnnlm.training",
    "evaluate_perplexity": "keras_rnnlm.evaluation",
    "make_optimizer": "keras_rnnlm.training",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Import ``name`` from its module on first use (PEP 562) and cache it in the package.

    Args:
        name: a public name of the package (one of ``__all__``), or one of its modules
            (``keras_rnnlm.training`` works after a bare ``import keras_rnnlm``).

    Returns:
        The object ``name`` refers to.

    Example:

    >>> import keras_rnnlm
    >>> keras_rnnlm.RNNLanguageModel  # imports keras_rnnlm.models (and TensorFlow) now
    """
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}"):
        value = importlib.import_module(f"{__name__}.{name}")  # keras_rnnlm.training etc.
    else:
        raise AttributeError(f"module 'keras_rnnlm' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
