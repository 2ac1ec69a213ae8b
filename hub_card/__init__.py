"""Hub export of LLaRA models: a complete model repository folder with a model card generated from data.

* :func:`~hub_card.export.export_model` - ``llara export``: merged weights, shipped code, tokenizer,
  sentence-transformers files and ``README.md`` (``LlaraCardData`` + ``templates/model_card.md.j2``).
* :func:`~hub_card.push.push_folder` - ``llara push``: ``huggingface_hub.HfApi.upload_folder``.
* :func:`~hub_card.results.read_results` - ``llara evaluate`` and mteb result files as card records.
* :func:`~hub_card.training.read_training_summary` - steps, learning rate, batch and loss from the Trainer logs.

Importing this package imports no torch/transformers; the functions import them when called.
"""

from .card_data import LlaraCardData, ModelFacts
from .export import NotLlaraModelError, export_model, render_model_card, validate_card
from .push import PushError, push_folder
from .results import EvalRecord, ResultsFormatError, read_result_file, read_results
from .training import TrainingSummary, read_training_summary

__all__ = [
    "EvalRecord",
    "LlaraCardData",
    "ModelFacts",
    "NotLlaraModelError",
    "PushError",
    "ResultsFormatError",
    "TrainingSummary",
    "export_model",
    "push_folder",
    "read_result_file",
    "read_results",
    "read_training_summary",
    "render_model_card",
    "validate_card",
]
