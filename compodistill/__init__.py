__version__ = "0.1.0"

from . import models  # registers the `compodistill_llava` model type with transformers' Auto classes (00_models)
