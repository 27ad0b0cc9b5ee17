"""The project's one error hierarchy.

Every error raised on purpose by edgecloud code derives from
:class:`EdgecloudError`. Each class says, through ``recoverable``, whether the
same operation may succeed if retried later (``True``) or will fail again
until something is fixed (``False``, fatal), and how a transport reports it:
its HTTP status, its gRPC status code and the short ``code`` an error body
names. These class attributes are the one place those mappings live; the HTTP
APIs (:func:`edgecloud.shared.base.asgi.response_for`), the gRPC server
(:func:`edgecloud.cloud.server.status_for`) and the gRPC client
(:func:`error_for_grpc_code`) all read them. The classes that set them::

    class                     retry        HTTP  gRPC                code
    EdgecloudError            fatal        500   INTERNAL            internal
    ConfigError               fatal        500   INTERNAL            config
    AuthenticationError       fatal (*)    401   UNAUTHENTICATED     unauthenticated
    BundleError               fatal        422   INTERNAL            bad_bundle
    InvalidInputError         fatal (*)    400   INVALID_ARGUMENT    invalid_input
    NotFoundError             fatal (*)    404   NOT_FOUND           not_found
    ResourceExhaustedError    recoverable  429   RESOURCE_EXHAUSTED  resource_exhausted
    UnavailableError          recoverable  503   UNAVAILABLE         unavailable
    GateFailedError           fatal        500   INTERNAL            gate_failed

(*) fatal for that request only: the same input will always be rejected, but the
process is healthy and other requests are unaffected.

Every other class has its parent's row. The whole tree, each class with the module it
lives in (under ``edgecloud.``)::

    class                                    module                     meaning
    EdgecloudError                           shared.base.errors         (base)
    ├── ConfigError                          shared.base.errors         bad or missing configuration
    │   └── AuthenticationError              shared.base.errors         missing or wrong credentials
    ├── BundleError                          shared.base.errors         bad or corrupt model bundle
    │   ├── ManifestError                    shared.base.errors         manifest.json unreadable or invalid
    │   ├── IntegrityError                   shared.base.errors         a file's size/sha256 mismatches, a
    │   │   │                                                           file is missing or unlisted
    │   │   └── SignatureError               shared.bundles.signing     manifest.sig missing, unreadable,
    │   │       │                                                       untrusted or wrong
    │   │       ├── UnsignedBundleError      shared.bundles.signing     no manifest.sig
    │   │       ├── MalformedSignatureError  shared.bundles.signing     not a valid signature file
    │   │       ├── UntrustedKeyError        shared.bundles.signing     signed by a key the store does not hold
    │   │       │   ├── RevokedKeyError      shared.bundles.signing     signed by a revoked key
    │   │       │   ├── RetiredKeyError      shared.bundles.signing     signed by a key a rotation replaced
    │   │       │   └── KeyRoleError         shared.bundles.signing     the key may not sign this name or kind
    │   │       └── BadSignatureError        shared.bundles.signing     the manifest changed after signing
    │   ├── DowngradeError                   shared.bundles.signing     version not newer than the installed one
    │   ├── ExpiredBundleError               shared.bundles.signing     past the manifest's signed expires_at
    │   ├── ArchiveError                     shared.bundles.artifacts   not a readable tar.gz
    │   │   └── UnsafeArchiveError           shared.bundles.artifacts   a member refused: absolute, "..", a
    │   │                                                               link, a duplicate, one too many
    │   ├── ArtifactTooLargeError            shared.bundles.artifacts   a download or archive over its cap
    │   └── BundleExistsError                shared.bundles.artifacts   the unpack target holds other content
    ├── InvalidInputError                    shared.base.errors         malformed request input
    │   └── CommandRejectedError             shared.fleetlink.commands  a fleet command a device must not act
    │                                                                   on (``reason`` says why)
    ├── NotFoundError                        shared.base.errors         the named session, bundle or device
    │                                                                   does not exist
    ├── ResourceExhaustedError               shared.base.errors         out of memory, queue full, quota spent
    ├── UnavailableError                     shared.base.errors         a dependency (cloud, broker, model)
    │   │                                                               is unreachable or not ready
    │   └── DownloadDeadlineError            shared.bundles.download    a download ran past its deadline
    └── GateFailedError                      modelkit.loop.improve      the new student is worse than its base

``tests/shared/base/test_errors.py`` holds both drawings to the code: every error class of the
project is in the tree, under its parent and in its module; every class that sets a mapping is in
the table with its values; each HTTP status is a real 4xx or 5xx and each gRPC code a real
``grpc.StatusCode``, as the mapping functions above send them.

Errors of libraries underneath (gRPC, onnxruntime, OS errors) are mapped to
these classes at the boundary where they are caught; nothing above that
boundary should see a foreign exception type. A few private exceptions steer
control flow inside one module (the downloader's ``_Retry``, the agent's
``_Failed``, the command line's ``_Refused``) and never leave it.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AuthenticationError",
    "BundleError",
    "ConfigError",
    "EdgecloudError",
    "IntegrityError",
    "InvalidInputError",
    "ManifestError",
    "NotFoundError",
    "ResourceExhaustedError",
    "UnavailableError",
    "error_for_grpc_code",
]


class EdgecloudError(Exception):
    """Base of every edgecloud error."""

    recoverable: ClassVar[bool] = False
    """Whether retrying the same operation later may succeed."""
    http_status: ClassVar[int] = 500
    grpc_code: ClassVar[str] = "INTERNAL"
    """The name of the ``grpc.StatusCode`` member (this module does not import grpc)."""
    code: ClassVar[str] = "internal"
    """What an error body calls this kind of error (``{"error": {"type": code, ...}}``)."""


class ConfigError(EdgecloudError):
    """Configuration is missing, malformed or inconsistent. Fatal."""

    recoverable = False
    code = "config"


class AuthenticationError(ConfigError):
    """The caller's credentials are missing or wrong. Fatal for that request; to a
    client it is a configuration problem (its token), hence the parent."""

    http_status = 401
    grpc_code = "UNAUTHENTICATED"
    code = "unauthenticated"


class BundleError(EdgecloudError):
    """A model bundle is unusable (bad layout, symlink, corrupt content). Fatal."""

    recoverable = False
    http_status = 422
    code = "bad_bundle"


class ManifestError(BundleError):
    """A bundle's ``manifest.json`` is missing, not JSON, or fails validation."""


class IntegrityError(BundleError):
    """A bundle's files do not match its manifest: wrong size or sha256, a
    listed file is missing, or an unlisted file is present."""


class InvalidInputError(EdgecloudError):
    """Request input is malformed. Fatal for that request; retrying the same
    input fails the same way."""

    recoverable = False
    http_status = 400
    grpc_code = "INVALID_ARGUMENT"
    code = "invalid_input"


class NotFoundError(EdgecloudError):
    """The named thing (session, bundle, device) does not exist or has expired.
    Fatal for that request."""

    recoverable = False
    http_status = 404
    grpc_code = "NOT_FOUND"
    code = "not_found"


class ResourceExhaustedError(EdgecloudError):
    """A resource ran out (memory, queue slots, quota). Recoverable: retry
    after backing off."""

    recoverable = True
    http_status = 429
    grpc_code = "RESOURCE_EXHAUSTED"
    code = "resource_exhausted"


class UnavailableError(EdgecloudError):
    """A dependency is unreachable or not ready yet. Recoverable: retry
    after backing off."""

    recoverable = True
    http_status = 503
    grpc_code = "UNAVAILABLE"
    code = "unavailable"


# The codes a server sends on purpose, read off the classes; a refused permission is a bad token too.
_FROM_GRPC: dict[str, type[EdgecloudError]] = {
    cls.grpc_code: cls for cls in (InvalidInputError, NotFoundError, ResourceExhaustedError, AuthenticationError)
} | {"PERMISSION_DENIED": AuthenticationError}


def error_for_grpc_code(name: str) -> type[EdgecloudError]:
    """The class a client raises for a failed call with this status code name.

    The inverse of ``grpc_code`` for the codes a server sends on purpose; every
    other code (UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, UNKNOWN...) says the
    service could not answer, and maps to :class:`UnavailableError`.
    """
    return _FROM_GRPC.get(name, UnavailableError)
