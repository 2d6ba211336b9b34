"""Synthetic sources with known answers, for testing and teaching.

``MarkovSource``: sentences from a random first-order Markov chain whose per-token entropy is
known exactly, so a trained language model's perplexity can be compared with the best possible.
"""

import math

import numpy as np

from keras_rnnlm.data.vocabulary import SPECIAL_TOKENS

FIRST_SYMBOL = len(SPECIAL_TOKENS)  # ids 0..3 are <pad>, <unk>, <bos>, <eos>


class MarkovSource:
    """Sentences ``x_1 .. x_n <eos>`` where ``x_1 ~ P(.|<bos>)`` and ``x_{t+1} ~ P(.|x_t)``.

    Args:
        num_symbols: alphabet size (token ids ``4 .. 4 + num_symbols - 1``).
        end_probability: probability of ``<eos>`` after every symbol (mean length ``1/p``).
        concentration: Dirichlet concentration of the transition rows (small = peaked = low
            entropy).
        seed: fixes the transition matrix.

    The chain's states are ``<bos>`` and the symbols; ``<eos>`` absorbs. ``transitions`` is
    ``(1 + num_symbols, num_symbols + 1)``: rows ``<bos>``, symbols; columns symbols, ``<eos>``.
    """

    def __init__(self, num_symbols=6, end_probability=0.1, concentration=0.3, seed=0):
        rng = np.random.default_rng(seed)
        self.num_symbols = num_symbols
        rows = rng.dirichlet([concentration] * num_symbols, size=1 + num_symbols)
        ends = np.array([0.0] + [end_probability] * num_symbols)[:, None]
        self.transitions = np.concatenate([rows * (1 - ends), ends], axis=1)

    @property
    def vocabulary_size(self) -> int:
        return FIRST_SYMBOL + self.num_symbols

    def sample(self, num_sentences: int, seed: int = 0) -> list[list[int]]:
        """``num_sentences`` id lists (symbols only; ``<eos>`` is implied, as in a corpus)."""
        rng = np.random.default_rng(seed)
        k = self.num_symbols
        cumulative = np.cumsum(self.transitions, axis=1)
        sentences = []
        for _ in range(num_sentences):
            state, sentence = 0, []
            while True:
                nxt = int(np.searchsorted(cumulative[state], rng.random(), side="right"))
                if nxt >= k:  # <eos>
                    break
                sentence.append(FIRST_SYMBOL + nxt)
                state = 1 + nxt
            sentences.append(sentence)
        return sentences

    def _expected_visits(self) -> np.ndarray:
        k = self.num_symbols
        q = np.zeros((k + 1, k + 1))  # transient-to-transient: state i -> symbol state 1 + j
        q[:, 1:] = self.transitions[:, :k]
        return np.linalg.solve(np.eye(k + 1) - q.T, np.eye(k + 1)[0])  # visits starting at <bos>

    def entropy_per_token(self) -> float:
        """Exact expected NLL (nats) per predicted token (symbols and ``<eos>``) of the best
        model: expected total entropy of a sentence / expected number of predictions."""
        p = self.transitions
        row_entropy = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), axis=1)
        visits = self._expected_visits()  # each visit makes one prediction
        return float(visits @ row_entropy / visits.sum())

    def perplexity(self) -> float:
        return math.exp(self.entropy_per_token())

    def unigram_perplexity(self) -> float:
        """Perplexity of the best context-free model (the stationary token frequencies)."""
        visits = self._expected_visits()
        emitted = visits @ self.transitions  # expected count of each symbol and <eos>
        freq = emitted / emitted.sum()
        return float(math.exp(-np.sum(freq * np.log(freq))))

    def sentence_nll(self, sentences) -> tuple[float, int]:
        """Total NLL of ``sentences`` under the true source and the number of predictions."""
        total, count = 0.0, 0
        for sentence in sentences:
            state = 0
            for token in [*sentence, None]:
                column = self.num_symbols if token is None else token - FIRST_SYMBOL
                total -= math.log(self.transitions[state, column])
                count += 1
                state = 1 + column
        return total, count


class RecallTask:
    """Long-range dependency: recall the first symbol after ``distance`` distractors.

    An example is ``x_0 x_1 .. x_d`` with ``x_0`` drawn uniformly from ``num_symbols`` symbols
    and ``x_1 .. x_d`` uniformly from ``num_distractors`` distractor tokens (a separate
    alphabet); the label is the index of ``x_0``. Read left to right, the label depends only
    on the token at distance ``d`` from the last input position, so a recurrent model must
    carry it through ``d`` steps; chance accuracy is ``1 / num_symbols``.

    Args:
        distance: ``d >= 0``, the number of distractors after the symbol.
        num_symbols: alphabet to recall (ids ``4 .. 4 + num_symbols - 1``).
        num_distractors: distractor alphabet (the following ids).

    Example:

    >>> task = RecallTask(distance=50)
    >>> inputs, labels = task.sample(1000, seed=0)  # (1000, 51) ids, (1000,) labels in 0..7
    """

    def __init__(self, distance: int, num_symbols: int = 8, num_distractors: int = 8):
        if distance < 0 or num_symbols < 2 or num_distractors < 1:
            raise ValueError("Need distance >= 0, num_symbols >= 2 and num_distractors >= 1.")
        self.distance = distance
        self.num_symbols = num_symbols
        self.num_distractors = num_distractors

    @property
    def vocabulary_size(self) -> int:
        return FIRST_SYMBOL + self.num_symbols + self.num_distractors

    @property
    def chance_accuracy(self) -> float:
        return 1.0 / self.num_symbols

    def label(self, inputs: np.ndarray) -> np.ndarray:
        """The label of each row: the index of its first token among the symbols."""
        return np.asarray(inputs)[:, 0] - FIRST_SYMBOL

    def sample(self, num_examples: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``(inputs, labels)``: int32 ``(num_examples, distance + 1)`` and ``(num_examples,)``."""
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, self.num_symbols, size=num_examples)
        distractors = rng.integers(0, self.num_distractors, size=(num_examples, self.distance))
        inputs = np.concatenate(
            [labels[:, None] + FIRST_SYMBOL, distractors + FIRST_SYMBOL + self.num_symbols],
            axis=1,
        ).astype("int32")
        return inputs, labels.astype("int32")
