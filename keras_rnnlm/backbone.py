"""The embedding + recurrent-stack backbone shared by the language model and the task models.

``token ids -> Embedding -> StackedRecurrent`` (id 0 = padding, masked in the recurrence) is
the front of every model of the library: ``RNNLanguageModel``, ``RNNEncoder`` (and so
``SequenceTagger`` and ``SentenceClassifier``) and ``BidirectionalLanguageModel`` (one
embedding, two stacks). The functions here build, build the weights of and run that front;
the models keep the layers as their own attributes (``embedding``, ``rnn`` or
``forward_rnn``/``backward_rnn``), so the weight paths in ``.keras`` files stay those of the
models written before this module existed.
"""

import keras
from keras import ops

from keras_rnnlm.cells import CELLS
from keras_rnnlm.fast.embedding import embedding_lookup
from keras_rnnlm.layers import StackedRecurrent

#: The ``make_backbone`` arguments that every model keeps as attributes and in its config.
BACKBONE_ARGUMENTS = (
    "vocabulary_size",
    "cell",
    "num_layers",
    "units",
    "embedding_dim",
    "dropout",
    "residual",
)


def backbone_config(model, extra: tuple[str, ...] = ()) -> dict:
    """``{name: getattr(model, name)}`` for ``BACKBONE_ARGUMENTS`` and then ``extra``: the
    backbone part of a model's ``get_config``.

    Example:

    >>> backbone_config(RNNEncoder(100), extra=("bidirectional",))["vocabulary_size"]
    100
    """
    return {name: getattr(model, name) for name in BACKBONE_ARGUMENTS + tuple(extra)}


def check_backbone_arguments(vocabulary_size: int, cell: str, dropout: float) -> None:
    """Raise ``ValueError`` for a vocabulary size, cell name or dropout rate that cannot work.

    Args:
        vocabulary_size: number of token ids, padding (0) included; an int >= 2.
        cell: one of ``keras_rnnlm.cells.CELLS``.
        dropout: rate in ``[0, 1)``.

    Example:

    >>> check_backbone_arguments(100, "lstm", 0.1)  # no error
    """
    if not isinstance(vocabulary_size, int) or vocabulary_size < 2:
        raise ValueError(f"vocabulary_size must be an int >= 2, got {vocabulary_size!r}.")
    if cell not in CELLS:
        raise ValueError(f"Unknown cell {cell!r}; expected one of {sorted(CELLS)}.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}.")


def make_backbone(
    vocabulary_size: int,
    embedding_dim: int,
    *,
    cell: str = "lstm",
    units: int = 64,
    num_layers: int = 1,
    dropout: float = 0.0,
    residual: bool = False,
    bidirectional: bool = False,
    stateful: bool = False,
    use_builtin_layers: bool = False,
    cell_kwargs: dict | None = None,
    embeddings_initializer="uniform",
    stack_names: tuple[str, ...] = ("rnn",),
    implementation: str = "auto",
) -> tuple[keras.layers.Embedding, list[StackedRecurrent]]:
    """The embedding layer (named ``"embedding"``) and one ``StackedRecurrent`` per name.

    Args:
        vocabulary_size: number of token ids, padding (0) included.
        embedding_dim: size of the token embeddings.
        cell, units, num_layers, dropout, residual, bidirectional, stateful,
            use_builtin_layers, cell_kwargs: as in ``StackedRecurrent`` (the same for every
            stack).
        embeddings_initializer: initializer of the embedding matrix (Keras's default
            ``"uniform"``).
        stack_names: the layer name of each stack (``("rnn",)``; a bidirectional language
            model has ``("forward_rnn", "backward_rnn")``).
        implementation: ``"auto"``, ``"reference"`` or ``"fast"`` (see ``keras_rnnlm.fast``).

    Returns:
        ``(embedding, stacks)``: a ``keras.layers.Embedding`` and a list of
        ``StackedRecurrent``, one per name, not built yet (``build_backbone`` builds them).

    Example:

    >>> embedding, (rnn,) = make_backbone(100, 16, units=32)
    >>> build_backbone(embedding, [rnn], (None, None))
    >>> outputs, states = run_backbone(embedding, rnn, np.array([[5, 7, 0]]))  # (1, 3, 32)
    """
    check_backbone_arguments(vocabulary_size, cell, dropout)
    if not stack_names:
        raise ValueError("stack_names must name at least one stack.")
    embedding = keras.layers.Embedding(
        vocabulary_size,
        embedding_dim,
        embeddings_initializer=embeddings_initializer,
        name="embedding",
    )
    stacks = [
        StackedRecurrent(
            cell=cell,
            units=units,
            num_layers=num_layers,
            dropout=dropout,
            residual=residual,
            bidirectional=bidirectional,
            stateful=stateful,
            use_builtin_layers=use_builtin_layers,
            cell_kwargs=cell_kwargs,
            implementation=implementation,
            name=name,
        )
        for name in stack_names
    ]
    return embedding, stacks


def build_backbone(
    embedding: keras.layers.Embedding, stacks: list[StackedRecurrent], input_shape: tuple
) -> None:
    """Create the weights of ``embedding`` and of each stack for int ids of ``input_shape``.

    Args:
        embedding: from ``make_backbone``.
        stacks: the stacks reading the embeddings.
        input_shape: ``(batch, time)`` of the token ids (entries may be None).
    """
    input_shape = tuple(input_shape)
    if not embedding.built:
        embedding.build(input_shape)
    for stack in stacks:
        if not stack.built:
            stack.build(input_shape + (embedding.output_dim,))


def embed(embedding: keras.layers.Embedding, token_ids, fast: bool = False):
    """``(embeddings, mask)``: ``(batch, time, embedding_dim)`` and boolean ``(batch, time)``,
    True at real tokens (id != 0).

    Dropout on the embeddings is the stack's first dropout, not applied here. ``fast``: gather
    the rows from the variable (``keras_rnnlm.fast.embedding``, the same values).
    """
    vectors = embedding_lookup(embedding, token_ids) if fast else embedding(token_ids)
    return vectors, ops.not_equal(token_ids, 0)


def run_backbone(
    embedding: keras.layers.Embedding,
    stack: StackedRecurrent,
    token_ids,
    initial_state=None,
    training: bool = False,
    reset=None,
):
    """Embed ``token_ids`` ``(batch, time)`` and run ``stack`` over them, padding masked.

    Args:
        embedding, stack: from ``make_backbone``.
        token_ids: int ``(batch, time)``, 0 = padding.
        initial_state: optional per-layer lists of states (default zeros).
        training: enables dropout.
        reset: optional ``(batch, time)`` per-row state resets (``Recurrent``): a row's states
            are zeroed before each marked token (a new document starts there).

    Returns:
        ``(outputs, final_states)`` of the stack: outputs ``(batch, time, output_dim)``; the
        final states are each row's states after its last real token.
    """
    fast = any(getattr(layer, "uses_fast_time_loop", False) for layer in stack.rnn_layers)
    x, mask = embed(embedding, token_ids, fast)
    kwargs = {} if reset is None else {"reset": reset}
    return stack(x, mask=mask, initial_state=initial_state, training=training, **kwargs)


#: The keys of a model input that carries per-row resets (``split_reset_inputs``).
TOKEN_IDS_KEY, RESET_KEY = "token_ids", "reset"


def split_reset_inputs(inputs) -> tuple:
    """``(token_ids, reset)`` of a model input: ids alone (``reset`` None) or a dict
    ``{"token_ids": ids, "reset": resets}`` as ``keras_rnnlm.data.pipelines`` makes for
    document streams.

    Args:
        inputs: int ``(batch, time)`` ids, or a dict with ``"token_ids"`` and, optionally,
            ``"reset"`` (``(batch, time)`` bool or 0/1).

    Returns:
        ``(token_ids, reset)``; ``reset`` is None when absent.

    Example:

    >>> split_reset_inputs({"token_ids": ids, "reset": resets})  # (ids, resets)
    """
    if not isinstance(inputs, dict):
        return inputs, None
    unknown = set(inputs) - {TOKEN_IDS_KEY, RESET_KEY}
    if TOKEN_IDS_KEY not in inputs or unknown:
        raise ValueError(
            f"A dict input needs the key {TOKEN_IDS_KEY!r} and optionally {RESET_KEY!r}; got "
            f"keys {sorted(inputs)}."
        )
    return inputs[TOKEN_IDS_KEY], inputs.get(RESET_KEY)
