"""Runners for ``train_throughput.py --peers``: our library as users feed it, and PyTorch's ``nn.LSTM``.

Each runner trains one epoch per ``run()`` and returns tokens/s (real, non-padding target
tokens). Same model (embedding -> 2x200 LSTM -> vocabulary logits), optimizer and batches on
both sides:

  ours, numpy        ``model.fit(x, y, batch_size=20, shuffle=False)`` (NumPy arrays)
  ours, tf.data      ``model.fit(Dataset.from_tensor_slices((x, y)).batch(20).prefetch(AUTOTUNE))``
  torch fp32         ``nn.LSTM``; loss, backward, ``clip_grad_norm_``, ``optimizer.step()``
  torch autocast     the same with the forward and loss under
                     ``torch.autocast("cpu", dtype=torch.bfloat16)`` (the one-line bf16 recipe)

Stream workload (PTB-small shapes): stateful, SGD lr 20 + global clip 0.25 on the mean loss
(= Zaremba's lr 1 / clip 5 on the summed loss). Sentence workload (the README's example):
bucketed padded batches, Adam 2e-3 + global clip 5, padding id 0 ignored by the loss.
"""

import time

import keras
import numpy as np
import tensorflow as tf

from keras_rnnlm import compile_language_model
from keras_rnnlm.models import RNNLanguageModel

UNITS, LAYERS, INIT = 200, 2, 0.1
SGD_LR, SGD_CLIP = 20.0, 0.25
ADAM_LR, ADAM_CLIP = 2e-3, 5.0


class OursRunner:
    """The library's model compiled with ``compile_language_model``'s defaults."""

    def __init__(self, workload, vocabulary_size, batches, feed="numpy", output_dtype="auto"):
        keras.utils.set_random_seed(0)
        stream = workload == "ptb"
        model = RNNLanguageModel(
            vocabulary_size, num_layers=LAYERS, units=UNITS, embedding_dim=UNITS,
            init_scale=INIT, stateful=stream, output_dtype=output_dtype,
        )  # fmt: skip
        if stream:
            model.build((batches[0][0].shape[0], None))
            compile_language_model(model, "sgd", SGD_LR, SGD_CLIP)
        else:
            compile_language_model(
                model, optimizer="adam", learning_rate=ADAM_LR, clip_norm=ADAM_CLIP
            )
        self.tokens = sum(int(np.count_nonzero(y)) for _, y in batches)
        if feed == "numpy":  # only for equal-shape (stream) batches
            x = np.concatenate([b[0] for b in batches])
            y = np.concatenate([b[1] for b in batches])
            self.fit_args = dict(x=x, y=y, batch_size=batches[0][0].shape[0], shuffle=False)
        elif stream:
            x = np.concatenate([b[0] for b in batches])
            y = np.concatenate([b[1] for b in batches])
            dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(batches[0][0].shape[0])
            self.fit_args = dict(x=dataset.prefetch(tf.data.AUTOTUNE), shuffle=False)
        else:  # the bucketed batches as a user's generator pipeline
            dataset = tf.data.Dataset.from_generator(
                lambda: iter(batches),
                output_signature=(tf.TensorSpec((None, None), tf.int32),) * 2,
            ).apply(tf.data.experimental.assert_cardinality(len(batches)))
            self.fit_args = dict(x=dataset.prefetch(tf.data.AUTOTUNE), shuffle=False)
        self.model = model
        self.run()  # compile

    def run(self):
        start = time.perf_counter()
        self.model.fit(**self.fit_args, epochs=1, verbose=0)
        return self.tokens / (time.perf_counter() - start)


class TorchRunner:
    """The same model and training step in PyTorch, float32 or under bf16 autocast."""

    def __init__(self, workload, vocabulary_size, batches, autocast=False):
        import torch
        from torch import nn

        torch.manual_seed(0)

        class LM(nn.Module):
            def __init__(self):
                super().__init__()
                self.embedding = nn.Embedding(vocabulary_size, UNITS)
                self.lstm = nn.LSTM(UNITS, UNITS, num_layers=LAYERS, batch_first=True)
                self.output = nn.Linear(UNITS, vocabulary_size)
                for p in self.parameters():
                    nn.init.uniform_(p, -INIT, INIT)

            def forward(self, x, state):
                h, state = self.lstm(self.embedding(x), state)
                return self.output(h), state

        self.torch, self.autocast = torch, autocast
        self.stream = workload == "ptb"
        self.vocabulary_size = vocabulary_size
        self.model = LM()
        if self.stream:
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=SGD_LR)
            self.clip = SGD_CLIP
        else:
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=ADAM_LR)
            self.clip = ADAM_CLIP
        self.loss = nn.CrossEntropyLoss(ignore_index=0)  # padding id 0 (none in the stream)
        self.batches = [
            (
                torch.tensor(np.asarray(a), dtype=torch.long),
                torch.tensor(np.asarray(b), dtype=torch.long),
            )
            for a, b in batches
        ]
        self.tokens = sum(int(np.count_nonzero(y)) for _, y in batches)
        self.run()

    def run(self):
        torch = self.torch
        start = time.perf_counter()
        state = None
        for x, y in self.batches:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
                logits, new_state = self.model(x, state if self.stream else None)
                loss = self.loss(logits.reshape(-1, self.vocabulary_size), y.reshape(-1))
            state = tuple(s.detach() for s in new_state)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
            self.optimizer.step()
        return self.tokens / (time.perf_counter() - start)
