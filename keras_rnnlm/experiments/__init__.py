"""Seeded experiments on exploding and vanishing gradients; each returns a table (list of dicts).

* ``scaled_orthogonal_gradients``: a SimpleRNN whose ``W_h = c * Q`` (``Q`` orthogonal): the
  measured ``||dJ/dh^(t-k)|| / ||dJ/dh^(t)||`` against the bound ``c^k``.
* ``gradient_ratio_table``: the same ratios at initialisation for SimpleRNN, GRU and LSTM
  (``h`` and the LSTM cell state ``c``) under several initialisations / forget-gate biases.
* ``long_range_accuracy``: accuracy on ``RecallTask`` (recall the first symbol after ``d``
  distractors) against ``d`` for the three cells at an equal parameter budget, across
  initialisation, forget-gate bias and optimiser settings.
* ``clipping_experiment``: a SimpleRNN language model trained with a large SGD learning rate
  without clipping, with global clipping and with per-variable clipping.

Modules: ``vanishing`` (the first two), ``capacity`` (recall), ``clipping``, ``tables``
(``format_table``) and ``common`` (settings, ``floatx``); every name stays importable from
``keras_rnnlm.experiments``.

They are sized for a laptop CPU (seconds to a few minutes); every argument can scale them up.
"""

from keras_rnnlm.experiments.capacity import (
    TRAINING_SETTINGS,
    cell_parameters,
    compile_recall_classifier,
    long_range_accuracy,
    recall_classifier,
    units_for_budget,
)
from keras_rnnlm.experiments.clipping import clipping_experiment
from keras_rnnlm.experiments.common import SETTINGS, floatx
from keras_rnnlm.experiments.tables import format_table
from keras_rnnlm.experiments.vanishing import gradient_ratio_table, scaled_orthogonal_gradients

__all__ = [
    "SETTINGS",
    "TRAINING_SETTINGS",
    "cell_parameters",
    "clipping_experiment",
    "compile_recall_classifier",
    "floatx",
    "format_table",
    "gradient_ratio_table",
    "long_range_accuracy",
    "recall_classifier",
    "scaled_orthogonal_gradients",
    "units_for_budget",
]
