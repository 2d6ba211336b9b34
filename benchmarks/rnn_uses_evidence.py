"""Evidence for the other uses of RNNs, at a small stated scale (a few minutes on 1 CPU thread).

Tables (Markdown on stdout, and ``--output`` as JSON):

1. Word segmentation of Tiny Shakespeare (spaces removed; tag: does a word end after this
   character?): unidirectional vs bidirectional ``SequenceTagger``, masked per-character
   accuracy on held-out lines, with the majority-tag baseline.
2. Depth: ``RNNLanguageModel`` with 1, 2, 3 LSTM layers, with and without residual connections,
   validation perplexity on a PTB subset after the same number of epochs on the same data.
3. Swapped-word detection on PTB (half the sentences have two words swapped):
   ``SentenceClassifier`` accuracy vs the majority baseline, for three poolings.
4. ``BidirectionalLanguageModel`` on the same PTB subset: perplexity per direction.

Usage::

    python benchmarks/rnn_uses_evidence.py                 # defaults below, ~10 min on 1 thread
    python benchmarks/rnn_uses_evidence.py --scale 0.25    # quick smoke run

Data: ``../shared/data`` (``$KERAS_RNNLM_DATA``); TFDS prepares its copy under ``--data-dir``.
"""

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_rnnlm import RNNLanguageModel, compile_language_model, evaluate_perplexity  # noqa: E402
from keras_rnnlm.data import Vocabulary, encode_corpus, load_corpus, sentence_dataset  # noqa: E402
from keras_rnnlm.data.labelled import (  # noqa: E402
    classification_dataset,
    segmentation_task,
    swapped_words_task,
    tagging_dataset,
)
from keras_rnnlm.task_models import (  # noqa: E402
    BidirectionalLanguageModel,
    SentenceClassifier,
    SequenceTagger,
    bidirectional_lm_dataset,
    compile_bidirectional_lm,
    compile_classifier,
    compile_tagger,
    evaluate_bidirectional_perplexity,
)


def _n(value, scale):
    return max(1, int(round(value * scale)))


def segmentation_table(data_dir, scale, epochs, seed):
    corpus = load_corpus("tiny_shakespeare", data_dir=data_dir)
    task = segmentation_task(corpus, max_lines=_n(3000, scale), max_length=64)
    train = tagging_dataset(*task.train, batch_size=32, max_length=64, seed=seed)
    test = tagging_dataset(*task.test, batch_size=64, max_length=64, shuffle=False)
    test_tags = np.concatenate([np.asarray(t) for t in task.test[1]])
    majority = float(np.mean(test_tags == np.bincount(np.concatenate(task.train[1])).argmax()))
    rows = [
        {
            "model": "majority tag (IN)",
            "accuracy": majority,
            "params": 0,
            "seconds": 0.0,
        }
    ]
    for bidirectional in (False, True):
        keras.utils.set_random_seed(seed)
        tagger = SequenceTagger(
            task.vocabulary.size,
            task.num_tags,
            units=64,
            embedding_dim=32,
            bidirectional=bidirectional,
        )
        compile_tagger(tagger, learning_rate=1e-2)
        start = time.time()
        tagger.fit(train, epochs=epochs, verbose=0)
        result = tagger.evaluate(test, verbose=0, return_dict=True)
        rows.append(
            {
                "model": ("bidirectional" if bidirectional else "unidirectional") + " LSTM 64",
                "accuracy": result["masked_accuracy"],
                "params": tagger.count_params(),
                "seconds": time.time() - start,
            }
        )
    setup = (
        f"Tiny Shakespeare, first {len(task.train[0])} non-empty train lines, "
        f"{len(task.test[0])} test lines ({len(test_tags)} characters), {epochs} epochs, Adam 1e-2"
    )
    return setup, rows


def _ptb_subset(data_dir, scale):
    corpus = load_corpus("ptb", data_dir=data_dir)
    train_lines = corpus.train[: _n(6000, scale)]
    valid_lines = corpus.valid[: _n(600, scale)]
    vocab = Vocabulary.build(train_lines, max_size=2000, pretokenized=True)
    return corpus, train_lines, valid_lines, vocab


def depth_table(data_dir, scale, epochs, seed):
    corpus, train_lines, valid_lines, vocab = _ptb_subset(data_dir, scale)
    max_length = 40
    bucket = [max_length + 2]  # one padded length: one XLA compilation per model

    def data(lines, shuffle):
        return sentence_dataset(
            encode_corpus(vocab, lines),
            batch_size=32,
            max_length=max_length,
            shuffle=shuffle,
            seed=seed,
            bucket_boundaries=bucket,
        )

    train, valid = data(train_lines, True), data(valid_lines, False)
    rows = []
    for num_layers, residual in [(1, False), (2, False), (2, True), (3, False), (3, True)]:
        keras.utils.set_random_seed(seed)
        model = RNNLanguageModel(
            vocab.size,
            num_layers=num_layers,
            units=128,
            embedding_dim=128,
            residual=residual,
        )
        compile_language_model(model, optimizer="adam", learning_rate=3e-3, clip_norm=5.0)
        start = time.time()
        model.fit(train, epochs=epochs, verbose=0)
        rows.append(
            {
                "layers": num_layers,
                "residual": residual,
                "valid_perplexity": evaluate_perplexity(model, valid)["perplexity"],
                "params": model.count_params(),
                "seconds": time.time() - start,
            }
        )
    setup = (
        f"PTB, first {len(train_lines)} train / {len(valid_lines)} valid sentences, vocabulary "
        f"top {vocab.size} words (rest <unk>), LSTM 128 units, embedding 128, {epochs} epochs, "
        "Adam 3e-3, global clip 5, batch 32, no dropout"
    )
    return setup, rows, (corpus, train_lines, valid_lines, vocab)


def classifier_table(ptb, scale, epochs, seed):
    corpus, *_ = ptb
    task = swapped_words_task(
        corpus, max_lines=_n(8000, scale), max_length=40, seed=seed, max_vocabulary=3000
    )
    train = classification_dataset(*task.train, batch_size=32, max_length=40, seed=seed)
    test = classification_dataset(*task.test, batch_size=64, max_length=40, shuffle=False)
    rows = [{"model": "majority class", "accuracy": task.majority_baseline("test"), "params": 0}]
    for pooling in ("final", "mean", "max"):
        keras.utils.set_random_seed(seed)
        model = SentenceClassifier(
            task.vocabulary.size, task.num_classes, units=64, embedding_dim=64, pooling=pooling
        )
        compile_classifier(model, learning_rate=3e-3)
        model.fit(train, epochs=epochs, verbose=0)
        accuracy = model.evaluate(test, verbose=0, return_dict=True)["accuracy"]
        rows.append(
            {
                "model": f"biLSTM 64, pooling={pooling}",
                "accuracy": accuracy,
                "params": model.count_params(),
            }
        )
    setup = (
        f"PTB swapped-word detection: {len(task.train[0])} train / {len(task.test[0])} test "
        f"sentences (>= 4 words, two different words swapped in ~half), vocabulary "
        f"{task.vocabulary.size}, {epochs} epochs"
    )
    return setup, rows


def bilm_table(ptb, epochs, seed):
    _, train_lines, valid_lines, vocab = ptb

    def data(lines, shuffle):
        return bidirectional_lm_dataset(
            sentence_dataset(
                encode_corpus(vocab, lines),
                batch_size=32,
                max_length=40,
                shuffle=shuffle,
                seed=seed,
                bucket_boundaries=[42],
            )
        )

    keras.utils.set_random_seed(seed)
    bilm = BidirectionalLanguageModel(vocab.size, units=128, embedding_dim=128)
    compile_bidirectional_lm(bilm, learning_rate=3e-3)
    bilm.fit(data(train_lines, True), epochs=epochs, verbose=0)
    result = evaluate_bidirectional_perplexity(bilm, data(valid_lines, False))
    return f"same PTB subset and vocabulary, 1 LSTM layer of 128 per direction, {epochs} epochs", [
        result
    ]


def _markdown(rows, columns):
    def cell(column, value):
        if isinstance(value, float):
            return f"{value:.4f}" if column == "accuracy" else f"{value:.1f}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(c, row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every subset size")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="TensorFlow CPU threads")
    parser.add_argument("--data-dir", default=None, help="TFDS data dir (default: a temp dir)")
    parser.add_argument("--output", default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="rnn_uses_tfds_")

    results = {}
    setup, rows = segmentation_table(data_dir, args.scale, args.epochs, args.seed)
    results["segmentation"] = {"setup": setup, "rows": rows}
    print(f"\n### 1. Word segmentation ({setup})\n")
    print(_markdown(rows, ["model", "accuracy", "params", "seconds"]), flush=True)

    setup, rows, ptb = depth_table(data_dir, args.scale, args.epochs, args.seed)
    results["depth"] = {"setup": setup, "rows": rows}
    print(f"\n### 2. Depth and residual connections ({setup})\n")
    print(
        _markdown(rows, ["layers", "residual", "valid_perplexity", "params", "seconds"]), flush=True
    )

    setup, rows = classifier_table(ptb, args.scale, args.epochs, args.seed)
    results["classifier"] = {"setup": setup, "rows": rows}
    print(f"\n### 3. Swapped-word detection ({setup})\n")
    print(_markdown(rows, ["model", "accuracy", "params"]), flush=True)

    setup, rows = bilm_table(ptb, args.epochs, args.seed)
    results["bilm"] = {"setup": setup, "rows": rows}
    print(f"\n### 4. Bidirectional LM ({setup})\n")
    print(_markdown(rows, ["forward_perplexity", "backward_perplexity", "tokens"]), flush=True)

    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
