"""The shared embedding + recurrent-stack backbone."""

import numpy as np
import pytest

from keras_rnnlm.backbone import (
    BACKBONE_ARGUMENTS,
    backbone_config,
    build_backbone,
    check_backbone_arguments,
    embed,
    make_backbone,
    run_backbone,
)
from keras_rnnlm.layers import StackedRecurrent
from keras_rnnlm.task_models import BidirectionalLanguageModel, RNNEncoder

IDS = np.array([[5, 7, 9, 0], [3, 0, 0, 0]], dtype=np.int32)


def test_make_backbone_names_and_settings():
    embedding, stacks = make_backbone(
        30,
        4,
        cell="gru",
        units=6,
        num_layers=2,
        dropout=0.1,
        bidirectional=True,
        stack_names=("forward_rnn", "backward_rnn"),
    )
    assert embedding.name == "embedding"
    assert (embedding.input_dim, embedding.output_dim) == (30, 4)
    assert [s.name for s in stacks] == ["forward_rnn", "backward_rnn"]
    assert stacks[0] is not stacks[1]
    for stack in stacks:
        assert isinstance(stack, StackedRecurrent)
        assert (stack.cell, stack.units, stack.num_layers) == ("gru", [6, 6], 2)
        assert stack.dropout == 0.1 and stack.bidirectional and not stack.stateful
    build_backbone(embedding, stacks, (None, None))
    assert embedding.built and all(s.built for s in stacks)
    assert stacks[0].weights[0].shape == (4, 18)  # first GRU kernel: embedding dim x 3 units


def test_run_backbone_masks_padding_like_each_row_alone():
    embedding, (rnn,) = make_backbone(30, 4, units=5)
    outputs, states = run_backbone(embedding, rnn, IDS)
    x, mask = embed(embedding, IDS)
    np.testing.assert_array_equal(mask, IDS != 0)
    np.testing.assert_array_equal(x, embedding(IDS))
    alone, alone_states = run_backbone(embedding, rnn, IDS[1:, :1])
    np.testing.assert_allclose(outputs[1, :1], alone[0], atol=1e-6)
    assert np.all(np.asarray(outputs)[1, 1:] == 0)  # zeros at padding
    for final, final_alone in zip(states[0], alone_states[0], strict=True):  # h, c of layer 0
        np.testing.assert_allclose(np.asarray(final)[1], np.asarray(final_alone)[0], atol=1e-6)


@pytest.mark.parametrize(
    "arguments,message",
    [
        ((1, "lstm", 0.0), "vocabulary_size"),
        ((10.0, "lstm", 0.0), "vocabulary_size"),
        ((10, "transformer", 0.0), "Unknown cell"),
        ((10, "lstm", 1.0), "dropout"),
    ],
)
def test_invalid_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        check_backbone_arguments(*arguments)
    with pytest.raises(ValueError, match=message):
        make_backbone(arguments[0], 4, cell=arguments[1], dropout=arguments[2])


def test_backbone_config_of_the_task_models():
    bilm = BidirectionalLanguageModel(40, cell="gru", num_layers=2, units=3, embedding_dim=7)
    expected = dict(
        vocabulary_size=40,
        cell="gru",
        num_layers=2,
        units=3,
        embedding_dim=7,
        dropout=0.0,
        residual=False,
    )
    assert backbone_config(bilm) == expected
    assert tuple(expected) == BACKBONE_ARGUMENTS
    encoder = RNNEncoder(40, bidirectional=False)
    assert backbone_config(encoder, extra=("bidirectional", "pooling"))["pooling"] == "final"
    assert encoder.get_config()["bidirectional"] is False
