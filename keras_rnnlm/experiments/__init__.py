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

* ``loss_by_hand``, ``BatchLossRecorder``: the loss of one batch from the softmax outputs, and
  every batch's own loss during ``fit`` (Keras logs a running mean).
* ``gradient_similarity_by_batch_size``, ``loss_gradient``: minibatch gradients against the
  full-corpus gradient (cosine similarity, cost).
* ``bptt_contributions``, ``train_lm_on_budget``: the per-time-step terms of the ``W_h``
  gradient; sentence batches vs a stream with truncated BPTT at the same token budget.
* ``load_agreement_pairs``, ``score_minimal_pairs``, ``accuracy_by_distance``: subject-verb
  agreement minimal pairs ("the keys to the cabinet are / is"), accuracy by distance.
* ``clip_threshold_sweep``: a real-text language model trained with a large SGD step, without
  clipping and with global clipping at several thresholds.
* ``layer_gradient_norms``, ``mean_and_spread``: the gradient reaching each layer of a stack;
  mean and spread over seeds.

Modules: ``vanishing`` (the first two), ``capacity`` (recall), ``clipping``, ``tables``
(``format_table``) and ``common`` (settings, ``floatx``); every name stays importable from
``keras_rnnlm.experiments``.

They are sized for a laptop CPU (seconds to a few minutes); every argument can scale them up.
"""

from keras_rnnlm.experiments.agreement import (
    MinimalPair,
    accuracy_by_distance,
    load_agreement_pairs,
    score_minimal_pairs,
)
from keras_rnnlm.experiments.batch_loss import BatchLossRecorder, loss_by_hand
from keras_rnnlm.experiments.bptt import bptt_contributions, train_lm_on_budget
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
from keras_rnnlm.experiments.depth import layer_gradient_norms, mean_and_spread
from keras_rnnlm.experiments.minibatch import (
    cosine,
    gradient_similarity_by_batch_size,
    loss_gradient,
)
from keras_rnnlm.experiments.real_clipping import clip_threshold_sweep
from keras_rnnlm.experiments.tables import format_table
from keras_rnnlm.experiments.vanishing import gradient_ratio_table, scaled_orthogonal_gradients

__all__ = [
    "BatchLossRecorder",
    "MinimalPair",
    "SETTINGS",
    "TRAINING_SETTINGS",
    "accuracy_by_distance",
    "bptt_contributions",
    "cell_parameters",
    "clip_threshold_sweep",
    "clipping_experiment",
    "compile_recall_classifier",
    "cosine",
    "floatx",
    "format_table",
    "gradient_ratio_table",
    "gradient_similarity_by_batch_size",
    "layer_gradient_norms",
    "load_agreement_pairs",
    "long_range_accuracy",
    "loss_by_hand",
    "loss_gradient",
    "mean_and_spread",
    "recall_classifier",
    "scaled_orthogonal_gradients",
    "score_minimal_pairs",
    "train_lm_on_budget",
    "units_for_budget",
]
