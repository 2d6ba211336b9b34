"""The library's named choices, in one module that imports neither TensorFlow nor Keras.

The command line builds its ``--help`` and its ``choices=`` from these tuples without importing
TensorFlow (which is slow, and must not be imported before ``keras-rnnlm`` has configured its
logging). The library modules that validate the same settings are meant to import them from
here, so that a new cell, preset or strategy is added in one place;
``tests/cli_test.py::test_cli_choices_are_the_library_constants`` checks that the two agree.
"""

#: recurrent cells (``keras_rnnlm.cells.CELLS``)
CELL_NAMES = ("simple_rnn", "lstm", "gru")
#: tokenization levels (``keras_rnnlm.data.vocabulary.LEVELS``)
LEVELS = ("word", "char")
#: ``tf.distribute`` strategies (``keras_rnnlm.distribute.STRATEGIES``)
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
#: Zaremba et al. (2014) PTB presets (the keys of ``keras_rnnlm.training.PRESETS``)
PRESET_NAMES = ("small", "medium", "large")
#: compute dtypes of the output layer's matmuls (``keras_rnnlm.models.OUTPUT_DTYPES``)
OUTPUT_DTYPES = ("auto", "float32", "bfloat16")
#: optimizers and clipping modes of ``keras_rnnlm.training.make_optimizer``
OPTIMIZERS = ("sgd", "adam")
CLIPPING = ("global", "per_variable", "none")
#: named corpora (``keras_rnnlm.data.corpora.CORPORA``)
CORPORA = ("python_docs", "ptb", "tiny_shakespeare")
#: batching modes of a training run (``keras_rnnlm.runs.TrainConfig.mode``)
MODES = ("sentence", "stream")
#: what to do with bytes that are not UTF-8 (``keras_rnnlm.data.corpora.read_lines``)
ENCODING_ERRORS = ("strict", "replace")
#: generation strategies of ``keras-rnnlm generate`` (names of ``keras_rnnlm.samplers.SAMPLERS``)
SAMPLER_NAMES = ("greedy", "sample", "top_k", "top_p", "beam")
#: ``jit_compile`` value for a graph-mode train step with XLA-compiled time loops
JIT_RECURRENCE = "recurrence"
#: defaults of ``keras_rnnlm.runs.TrainConfig`` that the command line's help text names
DEFAULT_CORPUS = "python_docs"
DEFAULT_OUTPUT = "rnnlm_run"
