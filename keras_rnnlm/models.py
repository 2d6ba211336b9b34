"""Models built from ``keras_rnnlm.layers``: the RNN language model."""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_rnnlm import compat
from keras_rnnlm.backbone import (
    backbone_config,
    build_backbone,
    check_backbone_arguments,
    make_backbone,
    run_backbone,
    split_reset_inputs,
)
from keras_rnnlm.data.fit_inputs import StallFreeFitMixin
from keras_rnnlm.fast import bf16_matmul_is_fast, check_implementation
from keras_rnnlm.fast import train_step as fast_dispatch
from keras_rnnlm.fast.output_layer import low_precision_dense
from keras_rnnlm.fast.train_step import JIT_RECURRENCE  # noqa: F401  (old home)
from keras_rnnlm.layers import residual_connection

_PACKAGE = "keras_rnnlm"
OUTPUT_DTYPES = ("auto", "float32", "bfloat16")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class RNNLanguageModel(StallFreeFitMixin, keras.Model):
    """A (multi-layer) recurrent language model: ``P(x_{t+1} | x_1..x_t)`` at every position.

    ``token ids -> Embedding -> StackedRecurrent -> Dense(vocabulary_size)``: the logits at
    position ``t`` predict token ``t + 1`` (teacher forcing: the true previous tokens are fed
    in). It is causal (position ``t`` only sees tokens ``<= t``) and padding-invariant (id 0
    is padding and is masked in the recurrence, so appending padding changes nothing).

    Args:
        vocabulary_size: number of token ids, padding (0) included.
        cell: ``"lstm"`` (default), ``"gru"`` or ``"simple_rnn"``.
        num_layers: recurrent layers (default 2).
        units: hidden size of every layer (default 200).
        embedding_dim: size of the token embeddings (default 200).
        dropout: rate on the embeddings, between layers and before the output layer
            (non-recurrent connections only, Zaremba et al. 2014).
        tie_embeddings: reuse the embedding matrix as the output matrix (Press & Wolf 2017);
            needs ``embedding_dim == units``.
        residual: skip connections between stacked layers.
        init_scale: if set, every weight matrix starts uniform in ``[-init_scale, init_scale]``
            (Zaremba: 0.1 small, 0.05 medium, 0.04 large); else Keras's defaults.
        stateful: carry the recurrent state across batches (TBPTT stream training); needs a
            fixed batch size; ``reset_states()`` zeros it.
        use_builtin_layers: use Keras's fused ``keras.layers.LSTM``/``GRU``/``SimpleRNN``
            (cuDNN on a GPU) instead of ``keras_rnnlm.layers.Recurrent``. The weights have the
            same layout, so ``set_weights`` moves them between the two.
        cell_kwargs: extra cell arguments (``unit_forget_bias``, ``reset_after``...).
        output_dtype: ``"auto"`` (default), ``"float32"`` or ``"bfloat16"``: dtype of the
            output layer's matmul operands (forward and both gradients). The weights stay
            float32 (master weights) and the logits come back float32, so the softmax and the
            loss stay float32; only the ``units x vocabulary`` matmuls round their operands to
            bfloat16 (oneDNN accumulates in float32). ``"auto"``: bfloat16 in the training
            step of the fast path on a device where it is faster (GPU, CPU with
            AVX512-BF16/AMX: about 1.5-2x for these matmuls), float32 everywhere else
            (evaluation, inference). On the fast path the recurrent layers' input
            projections and recurrent-kernel gradient product follow the same training
            dtype (``keras_rnnlm.fast.projection``; the per-step recurrent products stay
            float32). ``"float32"`` is the fp32 switch for all of them.
        implementation: ``"auto"`` (default), ``"reference"`` or ``"fast"``: which
            implementation trains the model (see ``keras_rnnlm.fast``); saved in the config.

    Compile arguments: ``compile`` also accepts ``jit_compile="recurrence"``, the old spelling
    of the fast path. Which path a compiled model takes is decided in one place,
    ``keras_rnnlm.fast.train_step``.

    Call arguments:
        inputs: int ``(batch, time)`` token ids, 0 = padding.
        training: enables dropout.

    Returns:
        Logits ``(batch, time, vocabulary_size)`` (no Keras mask attached; losses and metrics
        of ``keras_rnnlm`` mask by target id 0).

    Example:

    >>> model = RNNLanguageModel(vocabulary_size=1000, units=64, embedding_dim=64)
    >>> logits = model(np.array([[2, 17, 5, 0]]))  # (1, 4, 1000)
    """

    def __init__(
        self,
        vocabulary_size,
        cell="lstm",
        num_layers=2,
        units=200,
        embedding_dim=200,
        dropout=0.0,
        tie_embeddings=False,
        residual=False,
        init_scale=None,
        stateful=False,
        use_builtin_layers=False,
        cell_kwargs=None,
        output_dtype="auto",
        implementation="auto",
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_implementation(implementation)
        if use_builtin_layers and implementation == "fast":
            raise ValueError('implementation="fast" needs use_builtin_layers=False.')
        check_backbone_arguments(vocabulary_size, cell, dropout)
        if output_dtype not in OUTPUT_DTYPES:
            raise ValueError(f"output_dtype must be one of {OUTPUT_DTYPES}, got {output_dtype!r}.")
        if tie_embeddings and embedding_dim != units:
            raise ValueError(
                f"tie_embeddings needs embedding_dim == units, got {embedding_dim} and {units}."
            )
        self.vocabulary_size = vocabulary_size
        self.cell = cell
        self.num_layers = num_layers
        self.units = units
        self.embedding_dim = embedding_dim
        self.dropout = dropout
        self.tie_embeddings = tie_embeddings
        self.residual = residual
        self.init_scale = init_scale
        self.stateful = stateful
        self.use_builtin_layers = use_builtin_layers
        self.cell_kwargs = dict(cell_kwargs or {})
        self.output_dtype = output_dtype
        self.implementation = implementation

        init = "uniform"
        if init_scale is not None:
            init = keras.initializers.RandomUniform(-init_scale, init_scale)
        cell_kwargs = dict(self.cell_kwargs)
        if init_scale is not None:
            cell_kwargs.setdefault("kernel_initializer", init)
            cell_kwargs.setdefault("recurrent_initializer", init)
        self.embedding, (self.rnn,) = make_backbone(
            vocabulary_size,
            embedding_dim,
            cell=cell,
            units=units,
            num_layers=num_layers,
            dropout=dropout,
            residual=residual,
            stateful=stateful,
            use_builtin_layers=use_builtin_layers,
            cell_kwargs=cell_kwargs,
            embeddings_initializer=init,
            implementation=implementation,
        )
        if not tie_embeddings:
            self.output_layer = keras.layers.Dense(
                vocabulary_size,
                kernel_initializer=init if init_scale is not None else "glorot_uniform",
                name="logits",
            )

    def build(self, input_shape):
        if isinstance(input_shape, dict):  # {"token_ids", "reset"} (document streams)
            input_shape = input_shape["token_ids"]
        input_shape = tuple(input_shape)
        build_backbone(self.embedding, [self.rnn], input_shape)
        if self.tie_embeddings:
            self.output_bias = self.add_weight(
                shape=(self.vocabulary_size,), initializer="zeros", name="output_bias"
            )
        elif not self.output_layer.built:
            self.output_layer.build(input_shape + (self.units,))
        self.built = True

    @property
    def state_sizes(self):
        """Per layer, the sizes of the recurrent states (LSTM: ``[h, c]``)."""
        return self.rnn.state_sizes

    def get_initial_state(self, batch_size):
        """Zero states: for every layer, a list of ``(batch_size, units)`` tensors."""
        return [[ops.zeros((batch_size, s)) for s in sizes] for sizes in self.state_sizes]

    def output_weights(self):
        """``(kernel, bias)`` of the output layer: ``(units, vocabulary)``, ``(vocabulary,)``
        (the transposed embedding matrix as kernel when ``tie_embeddings``)."""
        if self.tie_embeddings:
            return ops.transpose(self.embedding.embeddings), self.output_bias
        return self.output_layer.kernel, self.output_layer.bias

    #: runtime state set by ``compile`` (``keras_rnnlm.fast.train_step``), never saved
    _fast_path = False
    _fused_metrics = None

    def output_matmul_dtype(self, training=False):
        """The output layer's matmul operand dtype for a training (or other) call."""
        if self.output_dtype != "auto":
            return self.output_dtype
        fast_bf16 = training and self._fast_path and bf16_matmul_is_fast()
        return "bfloat16" if fast_bf16 else "float32"

    def logits_from_hidden(self, hidden, training=False):
        """Output layer: ``(..., units) -> (..., vocabulary_size)`` float32 logits."""
        dtype = self.output_matmul_dtype(training)
        if dtype == "float32" and not self.tie_embeddings:
            return self.output_layer(hidden)
        kernel, bias = self.output_weights()
        if dtype == "float32":
            return ops.matmul(hidden, kernel) + bias
        # bfloat16 operands, float32 result: one 2-D matmul (oneDNN) on the flattened positions
        flat = ops.reshape(hidden, (-1, hidden.shape[-1]))  # (positions, units)
        logits = low_precision_dense(flat, kernel, bias, dtype)
        return tf.reshape(logits, tf.concat([tf.shape(hidden)[:-1], [-1]], axis=0))

    def forward(self, token_ids, initial_state=None, training=False, reset=None):
        """Logits and the final states (per layer, per state) after reading ``token_ids``.

        Padded positions (id 0) leave the states unchanged, so the final states of a
        right-padded batch are each row's states after its last real token. ``reset``
        (optional ``(batch, time)``, bool or 0/1) zeroes a row's states before the marked
        tokens (``keras_rnnlm.layers.Recurrent``).
        """
        hidden, states = self.hidden_states(token_ids, initial_state, training, reset)
        logits = self.logits_from_hidden(hidden, training)  # (batch, time, vocabulary_size)
        return logits, states

    def hidden_states(self, token_ids, initial_state=None, training=False, reset=None):
        """The last recurrent layer's outputs ``(batch, time, units)`` and the final states.

        ``token_ids`` may also be a dict ``{"token_ids", "reset"}`` (document stream batches,
        ``keras_rnnlm.data.pipelines.document_stream_dataset``).
        """
        if isinstance(token_ids, dict):
            token_ids, reset = split_reset_inputs(token_ids)
        check_token_ids(token_ids, self.vocabulary_size, rank=2)
        if not self.built:
            self.build(tuple(token_ids.shape))
        return run_backbone(self.embedding, self.rnn, token_ids, initial_state, training, reset)

    def step(self, token_ids, states):
        """One decoding step: logits ``(batch, vocabulary_size)`` for the next token and the new
        states, from ``token_ids`` ``(batch,)`` and the states after the previous tokens.

        Runs each cell's single step directly (no time loop), so it is O(1) per token and nests
        inside an XLA-compiled decoding loop. Padding ids (0) keep the states unchanged.
        """
        check_token_ids(token_ids, self.vocabulary_size, rank=1)
        token_ids = ops.convert_to_tensor(token_ids, dtype="int32")
        keep = ops.not_equal(token_ids, 0)[:, None]  # (batch, 1)
        x = self.embedding(token_ids)  # (batch, embedding_dim)
        new_states = []
        for i, layer in enumerate(self.rnn.rnn_layers):
            if self.use_builtin_layers:  # keras.layers.LSTM/GRU/SimpleRNN: their cell steps once
                h, layer_states = layer.cell(x, list(states[i]), training=False)
                layer_states = (
                    layer_states if isinstance(layer_states, (list, tuple)) else [layer_states]
                )
            else:
                h, layer_states = layer.cell.step(layer.cell.project_inputs(x), list(states[i]))
            layer_states = [ops.where(keep, new, old) for new, old in zip(layer_states, states[i])]
            h = residual_connection(self.residual, i, h, x)
            new_states.append(layer_states)
            x = h
        return self.logits_from_hidden(x), new_states

    def call(self, inputs, training=False):
        token_ids, reset = split_reset_inputs(inputs)  # ids, or {"token_ids", "reset"}
        return self.forward(token_ids, training=training, reset=reset)[0]

    def compute_mask(self, inputs, mask=None):
        return None

    def clone_with(self, **config_changes) -> "RNNLanguageModel":
        """A new model with ``config_changes`` applied (e.g. ``stateful=False``,
        ``use_builtin_layers=False``) and this model's trained weights, matched by path.

        Weights the copy does not have (a stateful model's carried states) are left behind;
        a weight of the copy that this model lacks is an error.
        """
        copy = RNNLanguageModel.from_config({**self.get_config(), **config_changes})
        copy.build((None, None))
        trained = {v.path: v for v in self.weights}
        for variable in copy.weights:
            if variable.path not in trained:
                raise ValueError(f"Cannot map weight {variable.path} from the trained model.")
            variable.assign(trained[variable.path])
        return copy

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, jit_compile="auto", **kwargs):
        """``keras.Model.compile``, after choosing the reference or the fast path
        (``keras_rnnlm.fast.train_step.configure_compile``); ``jit_compile`` also accepts
        ``"recurrence"`` (the fast path, old spelling)."""
        keras_jit = fast_dispatch.configure_compile(self, jit_compile, loss, metrics, kwargs)
        super().compile(
            optimizer=optimizer, loss=loss, metrics=metrics, jit_compile=keras_jit, **kwargs
        )
        fast_dispatch.finish_compile(self, jit_compile)

    def train_step(self, data):
        """The fast path's fused step when ``compile`` chose it, else Keras's train step."""
        logs = fast_dispatch.fused_train_step(self, data)
        return super().train_step(data) if logs is None else logs

    def compile_from_config(self, config):
        # Keras skips this for models with their own compile()
        compat.compile_from_config(self, config)

    def generate(self, inputs, max_length=None, sampler="greedy", **kwargs):
        """keras-hub-style generation; see ``keras_rnnlm.samplers.generate_with_model``.

        ``max_length`` is the total length of a row, prompt included. Strings in/out when a
        ``vocabulary=`` is passed (or the model has a ``vocabulary`` attribute), ids otherwise.
        The compiled function is cached on the model: a second call with the same shapes does
        not retrace.

        Example:

        >>> model.generate(np.array([[2, 17]]), max_length=10)  # (1, 10) int32 ids
        """
        from keras_rnnlm.samplers import generate_with_model

        return generate_with_model(self, inputs, max_length=max_length, sampler=sampler, **kwargs)

    @classmethod
    def from_preset(cls, dir_or_name) -> "RNNLanguageModel":
        """keras-hub style: a shipped model's name, an export, a preset directory or a run
        (``keras_rnnlm.presets.load_preset``); ``model.vocabulary`` is its vocabulary.

        Example:

        >>> model = RNNLanguageModel.from_preset("ptb_word_lstm_small")
        """
        from keras_rnnlm.presets import load_preset

        return load_preset(dir_or_name)

    def save_to_preset(self, directory, vocabulary=None, metadata=None):
        """Write this model as a preset directory (``keras_rnnlm.presets.save_to_preset``);
        ``vocabulary`` defaults to ``self.vocabulary`` (set by ``from_preset``)."""
        from keras_rnnlm.presets import save_to_preset

        vocabulary = vocabulary if vocabulary is not None else getattr(self, "vocabulary", None)
        if vocabulary is None:
            raise ValueError("save_to_preset needs the vocabulary: pass vocabulary=...")
        return save_to_preset(self, directory, vocabulary, metadata)

    def reset_states(self):
        """Zero the carried states of a stateful model (start of an epoch or of evaluation)."""
        self.rnn.reset_state()

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                **backbone_config(self),
                "tie_embeddings": self.tie_embeddings,
                "init_scale": self.init_scale,
                "stateful": self.stateful,
                "use_builtin_layers": self.use_builtin_layers,
                "cell_kwargs": self.cell_kwargs,
                "output_dtype": self.output_dtype,
                "implementation": self.implementation,
            }
        )
        return config


def check_token_ids(token_ids, vocabulary_size: int, rank: int) -> None:
    """Raise a clear error for token ids of the wrong rank, and (when the values are known:
    eager calls, numpy input) of a non-integer dtype or outside ``[0, vocabulary_size)``.

    Inside a traced function only the rank is checked: an XLA gather would silently clamp
    an out-of-range id, so data pipelines and serving signatures check values before that.
    """
    shape = getattr(token_ids, "shape", None)
    if shape is None:
        token_ids = np.asarray(token_ids)
        shape = token_ids.shape
    if getattr(shape, "rank", len(shape)) not in (None, rank):
        expected = "(batch, time)" if rank == 2 else "(batch,)"
        raise ValueError(f"Token ids must have rank {rank} {expected}, got shape {tuple(shape)}.")
    concrete = isinstance(token_ids, np.ndarray) or (
        tf.executing_eagerly() and tf.is_tensor(token_ids)
    )
    if not concrete:  # traced (Keras/SavedModel tracing may pass float specs): shape only
        return
    dtype = keras.backend.standardize_dtype(token_ids.dtype)
    if "int" not in dtype:
        raise TypeError(f"Token ids must be integers (int32 or int64), got dtype {dtype}.")
    values = np.asarray(token_ids)
    if values.size and (values.min() < 0 or values.max() >= vocabulary_size):
        bad = values[(values < 0) | (values >= vocabulary_size)][0]
        raise ValueError(
            f"Token id {bad} is outside the vocabulary [0, {vocabulary_size}): were these "
            "ids made with another vocabulary?"
        )
