"""VERSA's scorer with the torchmos metrics registered.

``python -m torchmos.adapters.versa <VERSA scorer arguments>`` registers the torchmos
metrics (:func:`torchmos.adapters.versa.metrics.register_with_versa`) and then runs VERSA's
own ``versa.bin.scorer.main`` with the arguments as given, so a score config may list
``torchmos_*`` entries beside VERSA's own metrics::

    python -m torchmos.adapters.versa --score_config integrations/versa/torchmos.yaml \\
        --pred pred.scp --gt gt.scp --output_file scores.jsonl --io soundfile

VERSA's scorer reads ``sys.argv`` itself, so this sets it for the call and restores it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .legacy import missing_versa

PROG = "python -m torchmos.adapters.versa"


def main(argv: Sequence[str] | None = None) -> None:
    """Register the torchmos metrics with VERSA, then run VERSA's scorer on ``argv``."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        from versa.bin import scorer

        from .metrics import register_with_versa
    except ImportError as e:
        raise SystemExit(f"{PROG}: {missing_versa(e)}") from None
    register_with_versa()
    saved = sys.argv
    sys.argv = [PROG, *args]
    try:
        scorer.main()
    finally:
        sys.argv = saved


if __name__ == "__main__":
    main()
