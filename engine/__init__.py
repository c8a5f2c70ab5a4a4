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
# torch's OpenMP threads spin while they wait; on a busy desktop (the GUI and other programs share the
# cores) that made one 20-step image 10-50x slower. Passive waiting costs nothing measurable when idle.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
