"""Vocabulary, tf.data pipelines and corpora."""

from keras_rnnlm.data.corpora import (
    Corpus,
    load_corpus,
    python_docs_corpus,
    split_documents,
    text_files_corpus,
)
from keras_rnnlm.data.fit_inputs import without_autotuner
from keras_rnnlm.data.pipelines import (
    document_stream,
    document_stream_dataset,
    encode_corpus,
    encode_documents,
    sentence_dataset,
    sentence_windows,
    stream_batches,
    stream_dataset,
    token_stream,
)
from keras_rnnlm.data.vocabulary import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Vocabulary

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "PAD_ID",
    "UNK_ID",
    "Corpus",
    "Vocabulary",
    "document_stream",
    "document_stream_dataset",
    "encode_corpus",
    "encode_documents",
    "load_corpus",
    "python_docs_corpus",
    "sentence_dataset",
    "sentence_windows",
    "split_documents",
    "stream_batches",
    "stream_dataset",
    "text_files_corpus",
    "token_stream",
    "without_autotuner",
]
