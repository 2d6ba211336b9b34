"""Looking inside trained language models: LSTM gate activations, and models from SavedModels.

* ``lstm_gate_activations(model, token_ids)``: the input, forget and output gates, the candidate
  and the cell and hidden states of every LSTM unit at every position of a text, computed by the
  model's own ``LSTMCell`` weights (the tensors ``LSTMCell.step`` uses internally but does not
  return). Used by tutorial 05 to draw the gates over real text.
* ``load_language_model(export_dir)``: an ``RNNLanguageModel`` and its ``Vocabulary`` rebuilt
  from a ``keras_rnnlm`` SavedModel export (e.g. the shipped ``saved_models/*``), so that Python
  tools that need a Keras model (samplers, scoring, gate inspection) work on an exported model.
"""

import json
from pathlib import Path

import numpy as np
import tensorflow as tf
from keras import ops

from keras_rnnlm.data.vocabulary import PAD_ID, Vocabulary
from keras_rnnlm.layers import residual_connection
from keras_rnnlm.models import RNNLanguageModel

#: The arrays ``lstm_gate_activations`` returns, in the lecture's notation.
GATE_NAMES = ("input", "forget", "candidate", "output", "cell", "hidden")


def lstm_gate_activations(model: RNNLanguageModel, token_ids, layer: int = 0) -> dict:
    """Per-position gate values of one LSTM layer of a language model.

    With ``z = W_x x_t + W_h h_{t-1} + b`` split in Keras's gate order ``i, f, c, o``::

        input     i_t = sigmoid(z_i)
        forget    f_t = sigmoid(z_f)
        candidate g_t = tanh(z_c)
        output    o_t = sigmoid(z_o)
        cell      c_t = f_t * c_{t-1} + i_t * g_t
        hidden    h_t = o_t * tanh(c_t)

    The layer's input ``x_t`` is the embedding (``layer=0``) or the previous layer's output,
    computed by the model itself (residual connections included). States start at zero, as in
    training and scoring. Padded positions (id 0) keep the previous states; their gate values
    are reported as 0.

    Args:
        model: an ``RNNLanguageModel`` with ``cell="lstm"`` (from-scratch or built-in layers).
        token_ids: int ``(batch, time)`` or ``(time,)`` ids, right-padded with 0 (normally
            ``[vocabulary.start_id] + vocabulary.encode(text)``).
        layer: which recurrent layer (0 = the one reading the embeddings).

    Returns:
        A dict with the keys of ``GATE_NAMES``, each a float32 numpy array
        ``(batch, time, units)`` (``(time, units)`` for a 1-D ``token_ids``): the value of that
        gate or state after reading position ``t``.

    Example:

    >>> ids = [vocab.start_id] + vocab.encode("To be, or not to be")
    >>> gates = lstm_gate_activations(model, ids)
    >>> gates["forget"].shape  # (len(ids), units)
    """
    if model.cell != "lstm":
        raise ValueError(f"lstm_gate_activations needs an LSTM model, got cell={model.cell!r}.")
    if not 0 <= layer < model.num_layers:
        raise ValueError(f"layer must be in [0, {model.num_layers}), got {layer}.")
    token_ids = np.asarray(token_ids, dtype=np.int32)
    squeeze = token_ids.ndim == 1
    if squeeze:
        token_ids = token_ids[None, :]
    if token_ids.ndim != 2:
        raise ValueError(f"token_ids must be (batch, time) or (time,), got {token_ids.shape}.")
    if not model.built:
        model.build((None, None))

    mask = token_ids != PAD_ID  # (batch, time)
    x = model.embedding(token_ids)  # (batch, time, embedding_dim)
    for index, below in enumerate(model.rnn.rnn_layers[:layer]):
        out = below(x, mask=ops.convert_to_tensor(mask), training=False)[0]
        x = residual_connection(model.residual, index, out, x)  # as StackedRecurrent.call
    cell = model.rnn.rnn_layers[layer].cell
    kernel, recurrent_kernel = (np.asarray(w, np.float32) for w in cell.get_weights()[:2])
    bias = np.asarray(cell.get_weights()[2], np.float32) if len(cell.get_weights()) > 2 else 0.0
    projected = np.asarray(x, np.float32) @ kernel + bias  # (batch, time, 4 * units)

    batch, time = token_ids.shape
    units = recurrent_kernel.shape[0]
    h = np.zeros((batch, units), np.float32)
    c = np.zeros((batch, units), np.float32)
    result = {name: np.zeros((batch, time, units), np.float32) for name in GATE_NAMES}
    for t in range(time):
        z = projected[:, t] + h @ recurrent_kernel  # (batch, 4 * units)
        z_i, z_f, z_c, z_o = np.split(z, 4, axis=-1)
        i, f, o = (1.0 / (1.0 + np.exp(-v)) for v in (z_i, z_f, z_o))
        g = np.tanh(z_c)
        new_c = f * c + i * g
        new_h = o * np.tanh(new_c)
        keep = mask[:, t, None]  # (batch, 1)
        c = np.where(keep, new_c, c)
        h = np.where(keep, new_h, h)
        for name, value in zip(GATE_NAMES, (i, f, g, o, c, h), strict=True):
            result[name][:, t] = np.where(keep, value, 0.0)
    if squeeze:
        result = {name: value[0] for name, value in result.items()}
    return result


def _checkpoint_key(*parts) -> str:
    return "/".join(("model", *parts, ".ATTRIBUTES/VARIABLE_VALUE"))


def load_language_model(export_dir) -> tuple[RNNLanguageModel, Vocabulary]:
    """Rebuild a stateless ``RNNLanguageModel`` and its ``Vocabulary`` from a SavedModel export.

    The export (``keras_rnnlm.export.export_saved_model`` or ``keras-rnnlm export``) holds the
    model config in ``model_card.json``, the vocabulary in ``vocabulary.json`` and the weights
    in its ``variables/`` checkpoint; this reads the three back (no graph is executed), so the
    rebuilt model gives the same log-probabilities as the export's ``score`` signature.

    Args:
        export_dir: the export directory (e.g. ``saved_models/ptb_word_lstm_small``).

    Returns:
        ``(model, vocabulary)``: a built, stateless ``RNNLanguageModel`` on the from-scratch
        layers, and the ``Vocabulary`` it was trained with.

    Example:

    >>> model, vocab = load_language_model("saved_models/shakespeare_char_lstm")
    >>> text_perplexity(model, vocab, ["ROMEO:"])
    """
    export_dir = Path(export_dir)
    card_path = export_dir / "model_card.json"
    if not card_path.is_file():
        raise FileNotFoundError(f"{export_dir} is not a keras_rnnlm export: no model_card.json.")
    config = dict(json.loads(card_path.read_text())["config"])
    config.update(stateful=False, use_builtin_layers=False, dropout=0.0)
    model = RNNLanguageModel.from_config(config)
    model.build((None, None))
    vocabulary = Vocabulary.load(export_dir / "vocabulary.json")

    reader = tf.train.load_checkpoint(str(export_dir / "variables" / "variables"))
    targets = {_checkpoint_key("embedding", "_embeddings"): model.embedding.embeddings}
    if model.tie_embeddings:
        targets[_checkpoint_key("output_bias")] = model.output_bias
    else:
        targets[_checkpoint_key("output_layer", "_kernel")] = model.output_layer.kernel
        targets[_checkpoint_key("output_layer", "bias")] = model.output_layer.bias
    for i, rnn_layer in enumerate(model.rnn.rnn_layers):
        for name in ("kernel", "recurrent_kernel", "bias"):
            variable = getattr(rnn_layer.cell, name, None)
            if variable is not None:
                targets[_checkpoint_key("rnn", "rnn_layers", str(i), "cell", name)] = variable
    for key, variable in targets.items():
        if not reader.has_tensor(key):
            raise ValueError(f"{export_dir}: the checkpoint has no {key!r} for {variable.path}.")
        value = reader.get_tensor(key)
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(
                f"{export_dir}: {key!r} has shape {value.shape}, the model expects {variable.shape}."
            )
        variable.assign(value)
    return model, vocabulary
