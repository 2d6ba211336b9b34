"""Stream perplexity with and without per-document state resets (issue 18, item 5).

Reads the shipped Tiny Shakespeare character LSTM (``saved_models/shakespeare_char_lstm``) and
its test split (TFDS's 90/5/5 split of ``input.txt``, the last 5%) as one stream, batch 1, the
way its model card was measured, twice: the state carried through the whole split (the card's
figure), and the state zeroed at every speech (blank lines separate speeches;
``keras_rnnlm.data.pipelines.document_stream``). Both score the same targets.

Run offline, not in CI (about two minutes on 2 CPU cores)::

    python benchmarks/document_resets.py
"""

import json
import time

from keras_rnnlm.data.corpora import shared_data_dir
from keras_rnnlm.data.pipelines import document_stream, encode_documents
from keras_rnnlm.evaluation import evaluate_stream_perplexity
from keras_rnnlm.inspection import load_language_model


def main() -> dict:
    model, vocabulary = load_language_model("saved_models/shakespeare_char_lstm")
    text = (shared_data_dir() / "tiny_shakespeare" / "input.txt").read_text(encoding="utf-8")
    rest = text[int(len(text) * 0.9) :]
    test_lines = rest[int(len(rest) * 0.5) :].splitlines()  # TFDS's 90/5/5: the last part
    documents = encode_documents(vocabulary, test_lines, "blank")
    stream, reset = document_stream(documents)
    out = {"documents": len(documents)}
    for name, resets in (("carried", None), ("reset_per_speech", reset)):
        start = time.perf_counter()
        result = evaluate_stream_perplexity(model, stream, window=256, reset=resets)
        out[name] = {key: result[key] for key in ("perplexity", "bits_per_token", "tokens")}
        out[name]["seconds"] = round(time.perf_counter() - start, 1)
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
