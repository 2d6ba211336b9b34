"""On-device deployment: LiteRT and ONNX ``step``/``score`` models, and host-side driving.

* ``export_model(model_or_path, out_dir, format)``: ``keras-rnnlm export --format litert|onnx``.
* ``keras_rnnlm.deploy.functions``: the frozen reference-path ``step``/``score`` functions that
  every format converts.
* ``keras_rnnlm.deploy.litert`` / ``keras_rnnlm.deploy.onnx``: the converters.
* ``keras_rnnlm.deploy.host``: step callables (``LiteRTStep``, ``OnnxStep``, ``KerasStep``)
  driven by the library's ``Vocabulary`` and ``keras_rnnlm.samplers``.

The ONNX and LiteRT runtimes are imported only when used.
"""

from keras_rnnlm.deploy.functions import (
    FORMATS,
    export_model,
    load_for_deploy,
    score_function,
    state_names,
    step_function,
)

__all__ = [
    "FORMATS",
    "export_model",
    "load_for_deploy",
    "score_function",
    "state_names",
    "step_function",
]
