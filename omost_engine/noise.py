"""Keep the ML libraries' import-time noise out of the user's output.

On every ``compose``/``render`` bitsandbytes logged "Failed to load CPU gemm_4bit_forward from
kernels-community: No module named 'kernels'. Please make sure you already `pip install kernels`"
(an optional CPU kernel; the user must not be told to install it), huggingface_hub warned that
diffusers passes a deprecated ``local_dir_use_symlinks``, and torchvision, where it is installed,
warns about its image extension and beta namespaces. Real problems still surface: errors are
logged, and every loading failure becomes one OmostError.
"""

from __future__ import annotations

import logging
import warnings

_done = False


def quiet_library_noise() -> None:
    """Idempotent; call before transformers, diffusers or bitsandbytes are imported."""
    global _done
    if _done:
        return
    _done = True
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*local_dir_use_symlinks.*")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torchvision(\..*)?$")
