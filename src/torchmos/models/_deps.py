"""Optional packages a model family needs, imported when that family is built."""

from __future__ import annotations

from typing import Any


def require_transformers(who: str) -> Any:
    """``import transformers``, or an ImportError saying which predictor needs it."""
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"{who} needs the 'transformers' package (its SSL backbone): "
                          "pip install 'transformers>=5.4,<6'") from e
    return transformers
