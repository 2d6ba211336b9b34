from keras_rnnlm.tf_logging import configure_tensorflow_logging

# before anything imports TensorFlow: no C++ log lines in the test output (a
# TF_CPP_MIN_LOG_LEVEL set in the environment keeps TensorFlow's own logging)
configure_tensorflow_logging()

import keras  # noqa: E402
import pytest  # noqa: E402

from keras_rnnlm.data.corpora import shared_data_dir  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)


def _require(path):
    if not path.exists():
        pytest.skip(
            f"needs the shared corpora: {path} is absent (set KERAS_RNNLM_DATA to ../shared/data)"
        )
    return path


@pytest.fixture
def ptb_dir():
    return _require(shared_data_dir() / "ptb" / "ptb.train.txt").parent


@pytest.fixture
def shakespeare_dir():
    return _require(shared_data_dir() / "tiny_shakespeare" / "input.txt").parent
