__version__ = "0.1.0"

import logging

# accelerate imports DeepSpeed whenever it is installed (to unwrap models), and on a machine without CUDA DeepSpeed's
# auto-detection then warns "Setting accelerator to CPU" once per process. CPU is the right accelerator there, so that
# one record is dropped; everything else DeepSpeed logs is kept. A filter on the logger, set before DeepSpeed creates
# it, survives the level and handler that DeepSpeed gives it at import.
logging.getLogger("DeepSpeed").addFilter(lambda record: not record.getMessage().startswith("Setting accelerator to CPU"))

from . import models  # registers the `compodistill_llava` model type with transformers' Auto classes (00_models)
