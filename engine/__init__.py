"""Erasure Studio's engine: model loading, sampling, erasure methods, evaluation, export.

Pure torch + diffusers; never imports Qt. Importing this package sets the offline
switches before diffusers or transformers can be imported, so nothing here ever
reaches a model hub.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
