"""One base error for everything the tools refuse, so the CLIs share one
error path: a LiftedError ends a tool with its message and exit code 2."""

from __future__ import annotations


class LiftedError(Exception):
    """Input or state the project cannot work with; the message names the
    file, field or option and says what to do."""


class BuildError(LiftedError):
    """A step of building Caffe failed."""


class DatasetError(LiftedError):
    """A dataset that cannot be turned into LMDBs."""


class ExtractionError(LiftedError):
    """Bad input to feature extraction."""


class WeightsError(LiftedError):
    """Weights that cannot be had, or that do not fit the net."""


class ScoringError(LiftedError, ValueError):
    """Features or labels that cannot be scored."""


class PipelineError(LiftedError):
    """A stage of tools/reproduce.py cannot run."""


class NetError(LiftedError):
    """A net or solver that cannot be written for the given settings."""


class UnsafeArchiveError(LiftedError, ValueError):
    """An archive member would land outside the folder it is extracted to."""


class FolderLockedError(LiftedError):
    """Another process is writing into the folder."""


class LmdbError(LiftedError):
    """A folder that is not an LMDB, or an LMDB whose values are not Caffe
    image Datums."""


class OutputError(LiftedError):
    """An output path that cannot be written (checked before the work), or a
    write that failed (a full disk)."""


class CaffeMissingError(LiftedError):
    """Caffe is not built (or CAFFE_ROOT points at no install), or it cannot
    do what was asked (a GPU on a CPU-only build)."""
