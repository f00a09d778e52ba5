"""The only door for audio into torchmos.

Everything that reads, checks, converts or resamples audio lives here, and every error
about bad input is raised here, as an :class:`AudioError` that names the file or the batch
item and says what to do.

Two entry points cover the library:

* :func:`prepare` turns what a user passes to a metric (a tensor, a numpy array, a list of
  clips of any lengths, optionally with explicit ``lengths``) into a list of mono float32
  1-D tensors at the model's sample rate.
* :func:`read` reads one file (anything ``soundfile`` reads, or a Kaldi pipe entry) into a
  mono float32 tensor and its sample rate, block by block (with ``target_fs``, each block
  is resampled as it arrives, and ``progress`` reports how far it got), so a long file never
  sits in memory at its own rate; :func:`find_audio` expands files, folders, Kaldi
  ``wav.scp`` files and plain lists into :class:`AudioEntry` items.

No input can exhaust memory here: :func:`resample` keeps its filters and work buffers to a
few tens of MB for any pair of rates (see its docstring), and refuses, naming the item,
the rates it could not resample within that.

The door has five rooms, one idea each: :mod:`~torchmos.audio.checks` (sample rates,
dtypes, clip contents, :class:`AudioError`), :mod:`~torchmos.audio.resampling` (bounded
resampling, the lazy torchaudio import), :mod:`~torchmos.audio.batches` (:func:`prepare`,
:func:`pad_batch`), :mod:`~torchmos.audio.files` (:func:`load`, :func:`read`) and
:mod:`~torchmos.audio.entries` (:func:`find_audio`, :class:`AudioEntry`). Everything is
importable from ``torchmos.audio`` itself.
"""

from __future__ import annotations

from . import batches as batches
from . import checks as checks
from . import entries as entries
from . import files as files
from . import resampling as resampling
from .batches import pad_batch, prepare
from .checks import AudioError, SilentAudioWarning, check_sample_rate, to_float
from .entries import AudioEntry, find_audio, source_key
from .entries import audio_extensions as audio_extensions
from .files import Loaded, load, read

# the resampler's filter cache and limits live (and are patched) in .resampling; these
# names stay here too, as before the split
from .resampling import _FILTERS as _FILTERS
from .resampling import BLOCK_SAMPLES as BLOCK_SAMPLES
from .resampling import CACHE_MAX_BYTES as CACHE_MAX_BYTES
from .resampling import DENSE_MAX_TAPS as DENSE_MAX_TAPS
from .resampling import MIN_RESAMPLE_RATE as MIN_RESAMPLE_RATE
from .resampling import TABLE_MAX_BYTES as TABLE_MAX_BYTES
from .resampling import _FilterCache as _FilterCache
from .resampling import import_torchaudio as import_torchaudio
from .resampling import resample

__all__ = [
    "AudioError",
    "AudioEntry",
    "Loaded",
    "SilentAudioWarning",
    "check_sample_rate",
    "find_audio",
    "load",
    "pad_batch",
    "prepare",
    "read",
    "resample",
    "source_key",
    "to_float",
]
