"""The compressed-feature codec: the edge encodes, the cloud decodes and validates.

A float32 feature vector travels as int8 values times one per-vector scale,
compressed with zstd. The fields of :class:`EncodedFeatures` map 1:1 onto the
protobuf message ``CompressedFeatures``; ``payload`` is self-describing::

    offset  size  content
    0       2     magic b"EF" (0x45 0x46)
    2       1     schema version (1 or 2); must equal the ``schema_version`` field
    3       ...   one zstd frame in magicless format (RFC 8878 without its 4-byte
                  magic number), compressed with the schema's built-in dictionary,
                  no checksum, no content size, no dictionary id; it decompresses
                  to exactly prod(dims) int8 values in C order

and value ``i`` decodes to ``q[i] * scale``. Transport (gRPC over TCP/TLS)
guards integrity, so the frame carries no checksum; the decoder still refuses
any frame that is malformed, has trailing bytes, or does not decompress to
exactly prod(dims) bytes, and never allocates more than that (plus a window
capped at 1 MiB) to find out, whatever the frame header claims.

**Quantisation.** The step is ``rms(x) / levels``, raised to ``max|x| / 127``
if an outlier would leave the int8 range, so a component equal to the RMS
becomes +-``levels``. Uniform rounding error gives cosine ~ ``1 - 1/(24 *
levels**2)`` for any vector of a few dozen dims or more, whatever the model.
``levels = 8`` gives 0.99935 (shipped student, 2000 queries: mean 0.99935, min
0.9992): the smallest round setting keeping every vector >= 0.999 (at 7 the
minimum drops below). A step tied to ``max|x|`` needs ~31 levels for the same
worst case, ~7 bytes more.

**Size.** At ``levels = 8`` the values are near-Gaussian with ~5 bits of
entropy each; a 128-dim vector takes ~93 bytes of frame (~9 of them zstd's
fixed framing) and ``nbytes()`` ~100: 5.1x smaller than float32, not 6x.
Cosine >= 0.999 needs relative error <= 0.002, i.e. >= 4.5 bits per
near-Gaussian value (the rate-distortion bound) before any framing, so this
pipeline cannot reach 6x; subtracting a per-model mean vector before
quantising would (~79 bytes on average), but then the decoder needs that
vector. The 256-byte dictionary only supplies entropy tables for such values
(its Huffman table saves ~20 bytes a vector); trained on Gaussian vectors at
``levels = 8``, it suits any model, and other levels work but compress less
well (``benchmarks/feature_codec.py --train-dictionary`` rebuilds it). The zstd
level hardly matters at this size.

**Schema 2** only changes the dictionary: it is trained on vectors whose variance falls off
along the axes, ``var_j ~ (j + 1)**-2``, the shape of a feature vector given
on its principal axes. The v4 student's graph rotates its centred features
onto their principal axes (an orthogonal transform: norms and cosines are
unchanged, the decoder needs nothing from the bundle). Most components are
then small, the quantised values are mostly 0 and +-1, and their order-0
entropy drops from ~81 to ~60 bytes a vector. Schema 1's Gaussian tables fit
such values badly (~84 bytes of frame); schema 2's give ~76 (measured on the
v3 student's features, rotated), while for vectors of equal variance in every
component it is schema 1 that is smaller (~93 against ~103). The encoder
compresses with both and sends the smaller frame, the header naming its schema;
the cloud decodes both.

Since v3 the student's features are centred by construction (the graph
subtracts their mean over training queries). That did not shrink them:
measured on the v3 student, 100.3 wire bytes, 5.10x, cosine min 0.99919
(``benchmarks/feature_codec.py``). The step follows the vector's own RMS, so
a centred vector costs the same ~5 bits a value at the same relative error;
the ~79 bytes above come from quantising the offset-free residual with the
step of the *uncentred* vector, judged by the cosine of the uncentred one,
which the common offset inflates. Reaching 6x at cosine >= 0.999 of the
vectors the cloud actually uses needs fewer bits per value: entropy coding
tuned to the values' real distribution, or a per-model transform sent once.
"""

from __future__ import annotations

import base64
import math
import numbers
import operator
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import zstandard as zstd

from edgecloud.shared.base.errors import ConfigError, InvalidInputError

__all__ = [
    "CODEC",
    "DTYPE",
    "SCHEMA_VERSION",
    "EncodedFeatures",
    "FeatureCodecConfig",
    "decode_features",
    "encode_features",
    "quantize",
]

CODEC = "int8-zstd"
DTYPE = "int8"
SCHEMA_VERSION = 2
"""The newest schema; :func:`encode_features` writes whichever of 1 and 2 gives the smaller
frame, :func:`decode_features` accepts every key of ``_DICTIONARIES``."""
MAGIC = b"EF"
HEADER = MAGIC + bytes([SCHEMA_VERSION])
"""The header of a schema-2 payload."""
HEADER_BYTES = len(HEADER)
#: Bytes :meth:`EncodedFeatures.nbytes` adds to the payload: the float32 scale.
SCALE_BYTES = 4
_MAX_WINDOW = 1 << 20
_FORMAT = zstd.FORMAT_ZSTD1_MAGICLESS
_DICTIONARIES = {
    # Schema 1: N(0, 1) vectors (``benchmarks/feature_codec.py --train-dictionary --schema 1``).
    1: base64.b64decode(
        "N6Qw7AEARkUqEMiSpA0iu7t7E0IIac3a//8zMzMzMzMzMzMzn4P+/9a21gghEtnd3Tulc0BwgPGokJgwISIi8lTAYqNQKBQKhUKhUCgUCoVC"
        "oVAoFAqFQqFQKIqiKIqi0IpSSimllKqqHqTAQMHAwMBAQcHAwMBAwcBAwUBBQcFghIWl2RhjjDGzAwEAAAAEAAAACAAAAA4FBQ79//0O/gkL"
        "+gUM/Q4C/P38+foB+Qn7BAgJCvsW/QYECwUAAAL3/PX8+PsI+gMJ+//zAQTzBgwAAfnzEAL6/vsFBPz7DvzuBPQOBAfy9gMAAf/7Efz9CQsD"
        "DAMJCA31/fz89wn/AQ=="
    ),
    # Schema 2: variance falling off along the axes (``--train-dictionary --schema 2``).
    2: base64.b64decode(
        "N6Qw7AIARkUsEMiTpDFJyk0Iaa01a83+///n////////////P+L//39rrbWttUbI3lKmlALzAGBggDaiqQ0AAAAEwFtXiPHbHIQMAQAAAAAAAAAA"
        "AAAAAAAAAAAAAAAARKhpJaSjImksEomDoSiKwyiK42CY6gIAAAABAAAABAAAAAgAAAABAAAAAAAAAQD/AAABAAAAAQD/AAAAAQAAAf8A/wAAAAD/"
        "AAEAAAABAAABAP8AAAAAAAEAAAD/AP8AAQAAAAD/AAAAAAAAAAD/AP8AAAAAAP//AAAAAAAAAAEAAAABAAAA/wAAAQD///8AAAAAAP8BAAABAAD/"
        "AAD/AA=="
    ),
}
_SMALLEST_SCALE = float(np.finfo(np.float32).smallest_subnormal)
_LARGEST_SCALE = float(np.finfo(np.float32).max) / 128  # exact; 127 steps of it stay finite


@dataclass(frozen=True)
class FeatureCodecConfig:
    """How the edge encodes; the decoder needs none of it."""

    levels: float = 8.0
    """Quantised magnitude of a component equal to the vector's RMS (1..127);
    higher is more precise and larger (each doubling costs 1 bit a value)."""
    zstd_level: int = 3
    """zstd compression level (1..22)."""

    def __post_init__(self) -> None:
        if isinstance(self.levels, bool) or not isinstance(self.levels, (int, float)):
            raise ConfigError(f"levels: expected a number, got {self.levels!r}")
        if not 1.0 <= self.levels <= 127.0:
            raise ConfigError(f"levels: must be in 1..127, got {self.levels!r}")
        if isinstance(self.zstd_level, bool) or not isinstance(self.zstd_level, int):
            raise ConfigError(f"zstd_level: expected an integer, got {self.zstd_level!r}")
        if not 1 <= self.zstd_level <= 22:
            raise ConfigError(f"zstd_level: must be in 1..22, got {self.zstd_level}")


@dataclass(frozen=True)
class EncodedFeatures:
    """One compressed feature vector, field for field the ``CompressedFeatures`` message."""

    codec: str
    dtype: str
    dims: tuple[int, ...]
    scale: float
    """Positive; exactly representable as float32 (the message's ``float``)."""
    payload: bytes
    """Header and zstd frame, see the module docstring."""
    schema_version: int
    model_name: str = ""
    model_version: int = 0
    model_sha256: str = ""
    """Of the model that produced the features, so the cloud can tell them apart."""

    def nbytes(self) -> int:
        """Bytes that grow with the vector: the payload plus the float32 scale.
        The other fields are fixed per-message metadata and not counted."""
        return len(self.payload) + SCALE_BYTES


_DEFAULT_CONFIG = FeatureCodecConfig()
_local = threading.local()  # zstd contexts are not thread-safe: one set per thread


def _compressor(level: int, schema_version: int) -> zstd.ZstdCompressor:
    cache: dict[tuple[int, int], zstd.ZstdCompressor] = _local.__dict__.setdefault("compressors", {})
    key = (level, schema_version)
    if key not in cache:
        params = zstd.ZstdCompressionParameters.from_level(
            level, format=_FORMAT, write_checksum=0, write_content_size=0, write_dict_id=0
        )
        dictionary = zstd.ZstdCompressionDict(_DICTIONARIES[schema_version])
        cache[key] = zstd.ZstdCompressor(compression_params=params, dict_data=dictionary)
    return cache[key]


def _decompressor(schema_version: int) -> zstd.ZstdDecompressor:
    cache: dict[int, zstd.ZstdDecompressor] = _local.__dict__.setdefault("decompressors", {})
    if schema_version not in cache:
        cache[schema_version] = zstd.ZstdDecompressor(
            dict_data=zstd.ZstdCompressionDict(_DICTIONARIES[schema_version]),
            max_window_size=_MAX_WINDOW,
            format=_FORMAT,
        )
    return cache[schema_version]


def quantize(vector: np.ndarray, levels: float) -> tuple[np.ndarray, float]:
    """``(q, scale)`` with ``q`` int8 and ``scale`` a positive float32 value; the
    vector must be finite. An all-zero vector gives zeros with scale 1."""
    x = np.asarray(vector, dtype=np.float64)
    peak = float(np.abs(x).max(initial=0.0))
    if peak == 0.0:
        return np.zeros(x.shape, dtype=np.int8), 1.0
    rms = math.sqrt(float(np.mean(x * x)))
    scale = min(max(float(np.float32(max(rms / levels, peak / 127.0))), _SMALLEST_SCALE), _LARGEST_SCALE)
    return np.clip(np.rint(x / scale), -127, 127).astype(np.int8), scale


def encode_features(
    vector: np.ndarray,
    config: FeatureCodecConfig = _DEFAULT_CONFIG,
    *,
    model_name: str = "",
    model_version: int = 0,
    model_sha256: str = "",
) -> EncodedFeatures:
    """Compress a 1-D finite feature vector; raises InvalidInputError otherwise."""
    array = np.asarray(vector)
    if array.dtype.kind not in "biuf":
        raise InvalidInputError(f"features: expected a numeric vector, got dtype {array.dtype}")
    if array.ndim != 1:
        raise InvalidInputError(f"features: expected a 1-D vector, got shape {array.shape}")
    if array.size == 0:
        raise InvalidInputError("features: the vector is empty")
    with np.errstate(over="ignore", invalid="ignore"):
        x = array.astype(np.float32)
    if not np.isfinite(x).all():
        raise InvalidInputError("features: the vector has non-finite values (or values beyond float32 range)")
    if isinstance(model_version, bool) or not isinstance(model_version, int) or not 0 <= model_version < 2**32:
        raise InvalidInputError(f"features: model_version must be a uint32, got {model_version!r}")
    q, scale = quantize(x, config.levels)
    raw = q.tobytes()
    # Each schema's entropy tables suit one shape of vector; a frame costs microseconds, so try both.
    schema, frame = min(
        ((version, _compressor(config.zstd_level, version).compress(raw)) for version in sorted(_DICTIONARIES)),
        key=lambda candidate: (len(candidate[1]), -candidate[0]),
    )
    payload = MAGIC + bytes([schema]) + frame
    return EncodedFeatures(
        codec=CODEC,
        dtype=DTYPE,
        dims=(int(x.size),),
        scale=scale,
        payload=payload,
        schema_version=schema,
        model_name=model_name,
        model_version=model_version,
        model_sha256=model_sha256,
    )


def _invalid(message: str) -> InvalidInputError:
    return InvalidInputError(f"compressed features: {message}")


def _check_dims(dims: Sequence[int], expected: Sequence[int] | None, max_elements: int) -> tuple[int, ...]:
    try:
        checked = tuple(operator.index(d) for d in dims)
    except TypeError:
        raise _invalid(f"dims must be integers, got {dims!r}") from None
    if not checked:
        raise _invalid("dims is empty")
    if any(d <= 0 for d in checked):
        raise _invalid(f"dims must be positive, got {checked}")
    if math.prod(checked) > max_elements:
        raise _invalid(f"dims {checked} hold {math.prod(checked)} elements, more than the limit {max_elements}")
    if expected is not None and checked != tuple(expected):
        raise _invalid(f"dims {checked} do not match the expected {tuple(expected)}")
    return checked


def _decompress(frame: bytes, count: int, schema_version: int) -> bytes:
    """Exactly ``count`` bytes out of ``frame``; allocates at most ``count`` bytes of output."""
    try:
        claimed = zstd.get_frame_parameters(frame, format=_FORMAT).content_size
        if claimed not in (zstd.CONTENTSIZE_UNKNOWN, count):
            raise _invalid(f"zstd frame claims {claimed} bytes, expected {count}")
        raw = _decompressor(schema_version).decompress(frame, max_output_size=count, allow_extra_data=False)
    except zstd.ZstdError as error:
        raise _invalid(f"payload does not decompress to {count} int8 values: {error}") from None
    if len(raw) != count:
        raise _invalid(f"payload decompresses to {len(raw)} bytes, expected {count}")
    return raw


def decode_features(
    encoded: EncodedFeatures,
    *,
    expected_dims: tuple[int, ...] | None = None,
    max_elements: int = 4096,
) -> np.ndarray:
    """Validate and decompress to a float32 array of shape ``dims``.

    Raises InvalidInputError for an unknown codec, dtype or schema version, bad
    dims (empty, non-positive, above ``max_elements``, not ``expected_dims``), a
    non-finite or non-positive scale, a bad header, a header that disagrees with
    the fields, or a frame that does not decompress to exactly prod(dims) bytes.
    """
    if encoded.codec != CODEC:
        raise _invalid(f"unknown codec {encoded.codec!r}, expected {CODEC!r}")
    if encoded.dtype != DTYPE:
        raise _invalid(f"unsupported dtype {encoded.dtype!r}, expected {DTYPE!r}")
    if isinstance(encoded.schema_version, bool) or encoded.schema_version not in _DICTIONARIES:
        raise _invalid(
            f"unsupported schema_version {encoded.schema_version!r}, expected one of {sorted(_DICTIONARIES)}"
        )
    dims = _check_dims(encoded.dims, expected_dims, max_elements)
    scale = encoded.scale
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not 0 < scale <= _LARGEST_SCALE:
        raise _invalid(f"scale must be finite, positive and <= {_LARGEST_SCALE:.4g}, got {scale!r}")
    payload = encoded.payload
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise _invalid(f"payload must be bytes, got {type(payload).__name__}")
    payload = bytes(payload)
    if len(payload) <= HEADER_BYTES:
        raise _invalid(f"payload of {len(payload)} bytes is shorter than header and frame")
    if payload[: len(MAGIC)] != MAGIC:
        raise _invalid(f"bad header magic {payload[: len(MAGIC)]!r}, expected {MAGIC!r}")
    if payload[len(MAGIC)] != encoded.schema_version:
        raise _invalid(f"header says version {payload[len(MAGIC)]}, schema_version says {encoded.schema_version}")
    raw = _decompress(payload[HEADER_BYTES:], math.prod(dims), encoded.schema_version)
    return (np.frombuffer(raw, dtype=np.int8).astype(np.float32) * np.float32(scale)).reshape(dims)
