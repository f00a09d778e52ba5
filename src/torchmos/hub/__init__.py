"""Where weights come from: model cards and the one resolver.

A :class:`ModelCard` carries a predictor's weights *and* the facts a caller must not get
wrong (native sample rate, mode, score range, licence, citation), in the spirit of
torchaudio's pipeline bundles. :func:`resolve` finds a card's weight file, in this order:

1. an explicit ``checkpoint=`` path given by the user;
2. the cache, ``$TORCHMOS_HOME`` (default ``~/.cache/torchmos``) ``/<card>/<file>``;
3. a file shipped inside an installed Python distribution (located through its metadata,
   never imported), e.g. ``distillmos/weights/distill_mos_v7.pt``;
4. a download from the card's URLs into the cache, unless ``TORCHMOS_OFFLINE=1``.

Downloads stream into a temporary file beside the target (``<file>.<random>.part``), are
checked against the card's sha256 and renamed atomically, all under a file lock, so eight
DDP ranks starting together download once; temporary files that a killed download left are
removed under that lock by the next download. Files whose authors publish no checksum are
trusted on first use: the sha256 of the first *whole* download is recorded beside the file
(``<file>.sha256``) and checked on every later load and every re-download; a user can pin
one with ``sha256=`` (which also checks a user's own ``checkpoint=``).

A download is whole only with evidence: the length the server stated (Content-Length, or
the end of a chunked transfer), and, when nothing else vouches for the bytes, the file's
own structure (a torch zip checkpoint ends with its central directory; a ``.safetensors``
header states the data's length). A download with neither a stated length nor a checkable
format is refused unless a checksum is pinned. A download that ends with an error is never
recorded. :func:`forget` resets a card's cache entry (weights, record, leftovers) when its
record is wrong, e.g. one an older torchmos made from a partial download.

Nothing else in torchmos touches the network or the cache.

The package has four modules, one idea each: :mod:`~torchmos.hub.cards` (the cards and
their registry), :mod:`~torchmos.hub.download` (the resolver, the cache and downloads),
:mod:`~torchmos.hub.integrity` (checksums, whole files, atomic writes) and
:mod:`~torchmos.hub.checkpoint` (reading and saving weight files). Everything is
importable from ``torchmos.hub`` itself.
"""

from __future__ import annotations

from . import cards as cards
from . import checkpoint as checkpoint
from . import download as download
from . import integrity as integrity
from .cards import CARDS, ModelCard, WeightFile, get_card, list_cards, register
from .checkpoint import load_checkpoint, save_atomic
from .download import CHECKPOINT_HINT as CHECKPOINT_HINT
from .download import _package_path as _package_path
from .download import cache_dir, check_file, forget, local_file, local_status, resolve
from .integrity import HubError, sha256sum

__all__ = [
    "CARDS",
    "HubError",
    "ModelCard",
    "WeightFile",
    "cache_dir",
    "check_file",
    "forget",
    "get_card",
    "list_cards",
    "load_checkpoint",
    "local_file",
    "local_status",
    "register",
    "resolve",
    "save_atomic",
    "sha256sum",
]
