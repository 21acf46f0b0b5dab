"""Shared test set-up: offline hub, few threads, the torchvision shim before anything imports timm."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pamm  # noqa: E402,F401  (sets up pamm._compat)
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
