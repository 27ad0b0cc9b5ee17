"""Size, fidelity and speed of the int8+zstd feature codec on real edge features.

Runs the shipped edge student over fresh mixed test queries, encodes each
query's feature vector as an escalation would carry it, decodes it as the
cloud would, and prints JSON: raw float32 bytes per escalation, encoded bytes,
the ratio, round-trip cosine and encode/decode time per vector. Usage::

    python benchmarks/feature_codec.py [--n 2000] [--seed 2025] [--levels 8] [--out DIR]
    python benchmarks/feature_codec.py --train-dictionary [--schema 2]   # rebuild a codec dictionary
"""

from __future__ import annotations

import argparse
import base64
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import zstandard as zstd

from edgecloud.edge.runtime import EdgeModel
from edgecloud.modelkit.arithmetic.task import Split, generate
from edgecloud.shared.bundles.manifest import Manifest, load_manifest
from edgecloud.shared.reasoner.features import (
    SCHEMA_VERSION,
    EncodedFeatures,
    FeatureCodecConfig,
    decode_features,
    encode_features,
    quantize,
)

TARGET_COSINE = 0.999
TARGET_RATIO = 6.0


def train_dictionary(levels: float = 8.0, schema: int = SCHEMA_VERSION) -> bytes:
    """The recipe of a codec schema's built-in dictionary: 4000 Gaussian 128-d vectors,
    quantised at ``levels``, 256 bytes, fixed id (deterministic for zstandard 0.25).
    Schema 1: N(0, 1) in every component. Schema 2: the variance of component ``j`` is
    ``(j + 1)**-2``, as for a vector given on its principal axes."""
    vectors = np.random.default_rng(0).standard_normal((4000, 128))
    if schema == 2:
        vectors = vectors * np.sqrt((np.arange(128) + 1.0) ** -2.0)
    elif schema != 1:
        raise SystemExit(f"error: no dictionary recipe for schema {schema}")
    samples = [quantize(v, levels)[0].tobytes() for v in vectors]
    return zstd.train_dictionary(256, samples, dict_id=0x45460000 + schema).as_bytes()


def stats(values: np.ndarray) -> dict[str, float]:
    return {"mean": float(values.mean()), "p50": float(np.percentile(values, 50)), "max": float(values.max())}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("models/edge-student"))
    parser.add_argument("--n", type=int, default=2000, help="number of mixed test queries")
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument("--levels", type=float, default=FeatureCodecConfig().levels)
    parser.add_argument("--zstd-level", type=int, default=FeatureCodecConfig().zstd_level)
    parser.add_argument("--out", type=Path, default=None, help="also write feature_codec.json here")
    parser.add_argument("--train-dictionary", action="store_true", help="print the dictionary (base64) and exit")
    parser.add_argument("--schema", type=int, default=SCHEMA_VERSION, help="which schema's dictionary to train")
    return parser


def _round_trip(
    features: np.ndarray, config: FeatureCodecConfig, manifest: Manifest, sha256: str
) -> tuple[list[EncodedFeatures], np.ndarray, list[float], list[float]]:
    """Encode and decode each vector: the encoded items, the decoded vectors, and each one's times in µs."""
    encoded, decoded, encode_us, decode_us = [], [], [], []
    for vector in features:
        started = time.perf_counter_ns()
        item = encode_features(
            vector, config, model_name=manifest.name, model_version=manifest.version, model_sha256=sha256
        )
        middle = time.perf_counter_ns()
        decoded.append(decode_features(item, expected_dims=vector.shape))
        encode_us.append((middle - started) / 1000)
        decode_us.append((time.perf_counter_ns() - middle) / 1000)
        encoded.append(item)
    return encoded, np.stack(decoded).astype(np.float64), encode_us, decode_us


def main() -> int:
    args = _parser().parse_args()
    if args.train_dictionary:
        print(base64.b64encode(train_dictionary(args.levels, args.schema)).decode())
        return 0

    config = FeatureCodecConfig(levels=args.levels, zstd_level=args.zstd_level)
    manifest = load_manifest(args.bundle)
    graph = manifest.io["graphs"]["int8"]
    sha256 = next(f.sha256 for f in manifest.files if f.path == graph)
    model = EdgeModel.from_bundle(args.bundle)
    features = np.stack([model.answer(p.query).features for p in generate(args.n, args.seed, Split.TEST)])

    encoded, back, encode_us, decode_us = _round_trip(features, config, manifest, sha256)
    x = features.astype(np.float64)
    cosine = (x * back).sum(axis=1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(back, axis=1))
    nbytes = np.array([e.nbytes() for e in encoded], dtype=np.float64)
    payload = np.array([len(e.payload) for e in encoded], dtype=np.float64)
    raw = features.shape[1] * 4
    ratio = raw / float(nbytes.mean())
    report = {
        "benchmark": "feature_codec",
        "queries": len(features),
        "seed": args.seed,
        "model": {"name": manifest.name, "version": manifest.version, "sha256": sha256},
        "machine": {"processor": platform.processor() or platform.machine(), "python": platform.python_version()},
        "config": {"levels": config.levels, "zstd_level": config.zstd_level},
        "feature_dim": int(features.shape[1]),
        "raw_float32_bytes": raw,
        "encoded_bytes": stats(nbytes),
        "payload_bytes": stats(payload),
        "ratio": ratio,
        "ratio_payload_only": raw / float(payload.mean()),
        "cosine": {
            "mean": float(cosine.mean()),
            "min": float(cosine.min()),
            "p1": float(np.percentile(cosine, 1)),
        },
        "time_us_per_vector": {
            "encode": {"mean": float(np.mean(encode_us)), "p50": float(np.median(encode_us))},
            "decode": {"mean": float(np.mean(decode_us)), "p50": float(np.median(decode_us))},
        },
        "targets": {
            "cosine_min": TARGET_COSINE,
            "ratio": TARGET_RATIO,
            "cosine_met": bool(cosine.min() >= TARGET_COSINE),
            "ratio_met": bool(ratio >= TARGET_RATIO),
        },
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "feature_codec.json").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
