"""keras_rnnlm: RNN language models on Keras 3."""

from keras_rnnlm.cells import GRUCell, LSTMCell, SimpleRNNCell
from keras_rnnlm.gradients import (
    GradientNormMonitor,
    gradient_norms_by_distance,
    jacobian_spectrum,
)
from keras_rnnlm.layers import Bidirectional, Recurrent, StackedRecurrent
from keras_rnnlm.losses import MaskedLanguageModelLoss
from keras_rnnlm.metrics import BitsPerCharacter, MaskedAccuracy, Perplexity
from keras_rnnlm.models import RNNLanguageModel
from keras_rnnlm.samplers import (
    BeamSampler,
    GreedySampler,
    RandomSampler,
    Sampler,
    TopKSampler,
    TopPSampler,
    generate,
    generate_text,
)
from keras_rnnlm.scoring import score_sentences, text_perplexity
from keras_rnnlm.task_models import (
    BidirectionalLanguageModel,
    RNNEncoder,
    SentenceClassifier,
    SequenceTagger,
    export_task_model,
)
from keras_rnnlm.tasks import MarkovSource, RecallTask
from keras_rnnlm.training import (
    PRESETS,
    EpochDecay,
    ResetStatesCallback,
    StopOnDivergence,
    compile_language_model,
    evaluate_perplexity,
    make_optimizer,
)

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "BeamSampler",
    "Bidirectional",
    "BidirectionalLanguageModel",
    "BitsPerCharacter",
    "EpochDecay",
    "GRUCell",
    "GradientNormMonitor",
    "GreedySampler",
    "LSTMCell",
    "MarkovSource",
    "MaskedAccuracy",
    "MaskedLanguageModelLoss",
    "Perplexity",
    "RNNEncoder",
    "RNNLanguageModel",
    "RandomSampler",
    "RecallTask",
    "Recurrent",
    "ResetStatesCallback",
    "Sampler",
    "SentenceClassifier",
    "SequenceTagger",
    "SimpleRNNCell",
    "StackedRecurrent",
    "StopOnDivergence",
    "TopKSampler",
    "TopPSampler",
    "compile_language_model",
    "evaluate_perplexity",
    "export_task_model",
    "gradient_norms_by_distance",
    "jacobian_spectrum",
    "generate",
    "generate_text",
    "make_optimizer",
    "score_sentences",
    "text_perplexity",
]
