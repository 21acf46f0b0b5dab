"""File readers every dataset shares: an image with a clear error naming the file, and RGB-encoded normals.

They sit below ``common``, ``nyud``, ``pascal`` and ``checks`` so each of those imports them without a loop."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from pamm.data.layout import DatasetError
from pamm.data.validate import check_normals_mode


def read_image_array(path: Path, mode: str | None = None, check_mode: Callable[[str, Path], None] | None = None
                     ) -> np.ndarray:
    """Decode an image file, with a clear error naming the file when it is missing or corrupt.

    ``check_mode(mode, path)`` sees the file's own PIL mode before any conversion (a 1-channel PNG where
    RGB belongs would otherwise be silently replicated into three equal channels)."""
    try:
        with Image.open(path) as image:
            if check_mode is not None:
                check_mode(image.mode, path)
            if mode is not None and image.mode != mode:
                image = image.convert(mode)
            return np.array(image)
    except DatasetError:
        raise
    except FileNotFoundError:
        raise DatasetError(f"{path} is missing: re-extract the dataset archive or regenerate the synthetic data") \
            from None
    except (OSError, ValueError, SyntaxError) as err:
        raise DatasetError(
            f"cannot read {path} ({err}); the file is corrupt or truncated: re-extract it or regenerate the data"
        ) from None


def decode_normals(encoded: np.ndarray) -> np.ndarray:
    """uint8 RGB v -> n = 2 v / 255 - 1; the all-zero colour (invalid) -> the zero vector."""
    normals = encoded[..., :3].astype(np.float32) * (2.0 / 255.0) - 1.0
    normals[~np.any(encoded[..., :3] != 0, axis=-1)] = 0.0
    return normals


def read_normals(path: Path) -> np.ndarray:
    """Decoded normals of an RGB-encoded PNG; a PNG of another mode (one channel) is refused."""
    return decode_normals(read_image_array(path, "RGB", check_mode=check_normals_mode))
