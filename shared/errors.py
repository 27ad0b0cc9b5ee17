"""The project's one error hierarchy.

Every error raised on purpose by edgecloud code derives from
:class:`EdgecloudError`. Each class says, through ``recoverable``, whether the
same operation may succeed if retried later (``True``) or will fail again
until something is fixed (``False``, fatal)::

    EdgecloudError
    ├── ConfigError               fatal        bad or missing configuration
    ├── BundleError               fatal        bad or corrupt model bundle
    │   ├── ManifestError         fatal        manifest.json unreadable or invalid
    │   └── IntegrityError        fatal        a file's size/sha256 mismatches, a file
    │                                          is missing, or an unlisted file exists
    ├── InvalidInputError         fatal (*)    malformed request input
    ├── NotFoundError             fatal (*)    the named session, bundle or device does not exist
    ├── ResourceExhaustedError    recoverable  out of memory, queue full, quota spent
    └── UnavailableError          recoverable  a dependency (cloud, broker, model) is
                                               unreachable or not ready

(*) fatal for that request only: the same input will always be rejected, but the
process is healthy and other requests are unaffected.

Errors of libraries underneath (gRPC, onnxruntime, OS errors) are mapped to
these classes at the boundary where they are caught; nothing above that
boundary should see a foreign exception type.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "BundleError",
    "ConfigError",
    "EdgecloudError",
    "IntegrityError",
    "InvalidInputError",
    "ManifestError",
    "NotFoundError",
    "ResourceExhaustedError",
    "UnavailableError",
]


class EdgecloudError(Exception):
    """Base of every edgecloud error."""

    recoverable: ClassVar[bool] = False
    """Whether retrying the same operation later may succeed."""


class ConfigError(EdgecloudError):
    """Configuration is missing, malformed or inconsistent. Fatal."""

    recoverable = False


class BundleError(EdgecloudError):
    """A model bundle is unusable (bad layout, symlink, corrupt content). Fatal."""

    recoverable = False


class ManifestError(BundleError):
    """A bundle's ``manifest.json`` is missing, not JSON, or fails validation."""


class IntegrityError(BundleError):
    """A bundle's files do not match its manifest: wrong size or sha256, a
    listed file is missing, or an unlisted file is present."""


class InvalidInputError(EdgecloudError):
    """Request input is malformed. Fatal for that request; retrying the same
    input fails the same way."""

    recoverable = False


class NotFoundError(EdgecloudError):
    """The named thing (session, bundle, device) does not exist or has expired.
    Fatal for that request."""

    recoverable = False


class ResourceExhaustedError(EdgecloudError):
    """A resource ran out (memory, queue slots, quota). Recoverable: retry
    after backing off."""

    recoverable = True


class UnavailableError(EdgecloudError):
    """A dependency is unreachable or not ready yet. Recoverable: retry
    after backing off."""

    recoverable = True
