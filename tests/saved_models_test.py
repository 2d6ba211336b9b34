"""The shipped exports in saved_models/ give, in a TF-only process, the test perplexity their
model cards claim (within 0.5%), on the real test split read from ../shared/data."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from keras_rnnlm.data.corpora import shared_data_dir

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]
SAVED = Path(__file__).resolve().parents[1] / "saved_models"
SHIPPED = {
    "ptb_word_lstm_small": ("ptb", "ptb.test.txt"),
    "shakespeare_char_lstm": ("tiny_shakespeare", "input.txt"),
}

CONSUMER = textwrap.dedent(
    """
    import json, math, sys
    import numpy as np
    import tensorflow as tf

    export_dir, corpus, path = sys.argv[1:4]
    lm = tf.saved_model.load(export_dir)
    card = json.load(open(export_dir + "/model_card.json"))
    text = open(path, encoding="utf-8").read()
    if corpus == "tiny_shakespeare":  # TFDS's 90/5/5 split: the test split is the last part
        rest = text[int(len(text) * 0.9):]
        text = rest[int(len(rest) * 0.5):]
    lines = [line for line in text.splitlines()]
    ids = lm.signatures["tokenize"](text=tf.constant(lines))["token_ids"].numpy()
    sentences = [row[1:][row[1:] > 0] for row in ids]  # drop <bos> and padding
    sentences = [s for s in sentences if len(s)]
    eos = 3
    if card["mode"] == "stream":  # the whole split as one stream, batch 1, state carried
        stream = np.concatenate([np.append(s, eos) for s in sentences]).astype(np.int32)
        step = lm.signatures["step"]
        names = card["state_names"]

        @tf.function
        def total_nll(tokens):
            state = lm.signatures["initial_state"](batch_size=tf.constant(1))
            total = tf.constant(0.0, tf.float64)
            for i in tf.range(tf.shape(tokens)[0] - 1):
                out = step(token=tokens[i : i + 1], **state)
                log_probs = tf.nn.log_softmax(out["logits"][0])
                total -= tf.cast(log_probs[tokens[i + 1]], tf.float64)
                state = {n: tf.ensure_shape(out[n], state[n].shape) for n in names}
            return total

        nll, count = float(total_nll(tf.constant(stream))), len(stream) - 1
    else:  # sentence mode: every sentence alone, <bos> ... <eos>
        nll, count = 0.0, 0
        for start in range(0, len(sentences), 64):
            batch = sentences[start : start + 64]
            width = max(len(s) for s in batch) + 2
            x = np.zeros((len(batch), width), np.int32)
            for r, s in enumerate(batch):
                x[r, : len(s) + 2] = [2, *s, eos]
            out = lm.signatures["serving_default"](token_ids=tf.constant(x))
            nll -= float(tf.reduce_sum(out["token_log_probs"]))
            count += int(sum(len(s) + 1 for s in batch))
    assert "keras_rnnlm" not in sys.modules
    print(json.dumps({"perplexity": math.exp(nll / count), "tokens": count}))
    """
)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_model_card_perplexity_is_real(name, tmp_path):
    export_dir = SAVED / name
    if not (export_dir / "saved_model.pb").is_file():
        pytest.skip(f"{export_dir} is not shipped")
    corpus, filename = SHIPPED[name]
    data = shared_data_dir() / ("ptb" if corpus == "ptb" else "tiny_shakespeare") / filename
    if not data.is_file():
        pytest.skip(f"needs the shared corpora: {data} is absent")
    card = json.loads((export_dir / "model_card.json").read_text())
    claimed = card["perplexity"]["test"]
    (tmp_path / "consumer.py").write_text(CONSUMER)
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "consumer.py"), str(export_dir), corpus, str(data)],
        capture_output=True, text=True, timeout=1200, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    assert measured["tokens"] == claimed["tokens"]
    assert abs(measured["perplexity"] / claimed["perplexity"] - 1) <= 0.005, (measured, claimed)


def test_saved_models_stay_small():
    total = sum(f.stat().st_size for f in SAVED.rglob("*") if f.is_file())
    assert total <= 25 * 2**20, f"saved_models/ holds {total / 2**20:.1f} MiB (limit 25 MiB)"
