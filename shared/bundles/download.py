"""A safe, resumable artifact download over HTTP(S), with the standard library.

:func:`download` resumes after a cut with ``Range``, enforces a size cap, an overall deadline and a
minimum rate, refuses redirects that would leak credentials or drop TLS, and checks the sha256
before renaming the file into place. Errors: ArtifactTooLargeError (over the cap), IntegrityError
(bytes do not match), UnavailableError (network failure after every attempt;
DownloadDeadlineError past the deadline), NotFoundError (HTTP 404/410), ConfigError (not http(s),
another 4xx, a refused redirect).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from edgecloud.shared.base.errors import ConfigError, IntegrityError, NotFoundError, UnavailableError
from edgecloud.shared.bundles.artifacts import ArtifactTooLargeError

__all__ = ["DownloadDeadlineError", "download"]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_READ = 64 << 10
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE_RE = re.compile(r"bytes \*/(\d+)")
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, ssl.SSLError)


class _Retry(Exception):
    """One attempt failed in a way another attempt may fix."""


class _SafeRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects, but never from https to http, and drops credentials
    when the redirect leaves the original host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is None:
            return None
        old_url, new_url = urllib.parse.urlsplit(req.full_url), urllib.parse.urlsplit(new.full_url)
        if old_url.scheme == "https" and new_url.scheme != "https":
            raise urllib.error.HTTPError(newurl, code, "refusing a redirect from https to http", headers, fp)
        if old_url.netloc != new_url.netloc:
            for name in ("Authorization", "Cookie"):
                new.remove_header(name)
        return new


class _Download:
    """The state of one download across attempts: the ``.part`` file, the
    bytes it holds and their running sha256."""

    def __init__(self, part: Path, max_bytes: int) -> None:
        self.part, self.max_bytes = part, max_bytes
        self.sha, self.have = hashlib.sha256(), 0

    def adopt_leftover(self) -> bool:
        """Continue from a ``.part`` an earlier call left; True if there was one."""
        if not self.part.is_file() or self.part.is_symlink():
            self.part.unlink(missing_ok=True)
            return False
        with self.part.open("rb") as handle:
            while (chunk := handle.read(_CHUNK)) and self.have + len(chunk) <= self.max_bytes:
                self.sha.update(chunk)
                self.have += len(chunk)
            if chunk:  # larger than the cap: useless
                self.restart()
                return False
        return self.have > 0

    def restart(self) -> None:
        self.part.unlink(missing_ok=True)
        self.sha, self.have = hashlib.sha256(), 0


def _parse_content_range(value: str | None) -> tuple[int, int | None] | None:
    match = _CONTENT_RANGE_RE.fullmatch((value or "").strip())
    if not match:
        return None
    return int(match[1]), None if match[3] == "*" else int(match[3])


def _open(
    opener: urllib.request.OpenerDirector, url: str, state: _Download, headers: Mapping[str, str], timeout_s: float
) -> http.client.HTTPResponse | None:
    """The response to a GET from ``state.have`` on; None when the leftover ``.part`` was complete already."""
    request_headers = {"Accept-Encoding": "identity", **headers}
    if state.have:
        request_headers["Range"] = f"bytes={state.have}-"
    request = urllib.request.Request(url, headers=request_headers)
    try:
        return opener.open(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        with exc:
            if exc.code == 416 and state.have:  # our range starts at or past the end
                match = _UNSATISFIED_RANGE_RE.fullmatch((exc.headers.get("Content-Range") or "").strip())
                if match and int(match[1]) == state.have:
                    return None  # the leftover .part was complete already
                have = state.have
                state.restart()
                raise _Retry(f"HTTP 416 for bytes={have}-; restarting from 0") from exc
            if exc.code in (408, 425, 429) or exc.code >= 500:
                raise _Retry(f"HTTP {exc.code} {exc.reason}") from exc
            if exc.code in (404, 410):
                raise NotFoundError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
            hint = "; check the artifact credentials" if exc.code in (401, 403) else ""
            raise ConfigError(f"{url}: HTTP {exc.code} {exc.reason}{hint}") from exc  # redirects refused, other 4xx


def _total(response: http.client.HTTPResponse, url: str, state: _Download) -> int | None:
    """The whole body's size the response announces (None if unknown); restarts ``state`` on a 200."""
    length_header = response.headers.get("Content-Length")
    length = int(length_header) if length_header and length_header.isdigit() else None
    if response.status == 206 and state.have:
        content_range = _parse_content_range(response.headers.get("Content-Range"))
        if content_range is None or content_range[0] != state.have:
            state.restart()
            raise _Retry(f"unexpected Content-Range {response.headers.get('Content-Range')!r}; restarting")
        total = content_range[1] if content_range[1] is not None else (
            state.have + length if length is not None else None
        )  # fmt: skip
    elif response.status == 200:
        if state.have:
            log.info("%s: the server ignored Range; downloading from the start", url)
            state.restart()
        total = length
    else:
        raise UnavailableError(f"{url}: unexpected HTTP {response.status} {response.reason}")
    if total is not None and total > state.max_bytes:
        raise ArtifactTooLargeError(f"{url}: {total} bytes exceeds the limit of {state.max_bytes}")
    return total


def _receive(
    response: http.client.HTTPResponse,
    url: str,
    state: _Download,
    total: int | None,
    progress: Callable[[int, int | None], None] | None,
    pace: _Pace,
) -> None:
    """Append the body to the ``.part``, within the cap and the pace."""
    with state.part.open("ab") as out:
        try:
            # read1: at most one read from the socket, so a server that drips bytes cannot keep one
            # call (and the deadline check after it) waiting for a whole chunk.
            while chunk := response.read1(_READ):
                pace.check(url, state.have, len(chunk))
                if state.have + len(chunk) > state.max_bytes:
                    raise ArtifactTooLargeError(f"{url}: more than the limit of {state.max_bytes} bytes")
                out.write(chunk)
                state.sha.update(chunk)
                state.have += len(chunk)
                if progress is not None:
                    progress(state.have, total)
        finally:
            out.flush()
            os.fsync(out.fileno())


def _attempt(
    opener: urllib.request.OpenerDirector,
    url: str,
    state: _Download,
    *,
    headers: Mapping[str, str],
    timeout_s: float,
    progress: Callable[[int, int | None], None] | None,
    pace: _Pace,
) -> None:
    """One GET from ``state.have`` on; returns when the body is complete."""
    response = _open(opener, url, state, headers, timeout_s)
    if response is None:
        return
    with response:
        total = _total(response, url, state)
        if progress is not None:
            progress(state.have, total)
        pace.start_attempt()
        _receive(response, url, state, total, progress, pace)
        if total is not None and state.have < total:
            raise _Retry(f"connection closed after {state.have} of {total} bytes")
        if total is not None and state.have > total:
            state.restart()
            raise _Retry(f"received {state.have} bytes, more than the {total} announced; restarting")


class DownloadDeadlineError(UnavailableError):
    """The download ran past its overall deadline; the ``.part`` is kept for a later resume."""


@dataclass
class _Pace:
    """The overall deadline and the minimum rate of one :func:`download`."""

    deadline_s: float | None
    min_rate_bps: float
    rate_grace_s: float
    started: float = field(default_factory=time.monotonic)
    attempt_started: float = 0.0
    attempt_bytes: int = 0

    def start_attempt(self) -> None:
        self.attempt_started, self.attempt_bytes = time.monotonic(), 0

    def check_deadline(self, url: str, have: int) -> None:
        if self.deadline_s is not None and time.monotonic() - self.started > self.deadline_s:
            raise DownloadDeadlineError(
                f"{url}: not complete within its deadline of {self.deadline_s:g} s ({have} bytes)"
            )

    def check(self, url: str, have: int, received: int) -> None:
        self.attempt_bytes += received
        self.check_deadline(url, have)
        elapsed = time.monotonic() - self.attempt_started
        if self.min_rate_bps and elapsed > self.rate_grace_s and self.attempt_bytes / elapsed < self.min_rate_bps:
            raise _Retry(
                f"{self.attempt_bytes / elapsed:.0f} B/s over {elapsed:.0f} s, under the minimum of "
                f"{self.min_rate_bps:g} B/s"
            )


def _check_arguments(
    url: str,
    expected_sha256: str | None,
    attempts: int,
    max_bytes: int,
    timeout_s: float,
    deadline_s: float | None,
    min_rate_bps: float,
    rate_grace_s: float,
) -> str | None:
    """ConfigError for arguments :func:`download` cannot work with; the sha256 in lower case."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ConfigError(f"{url!r}: only http and https URLs can be downloaded")
    if expected_sha256 is not None:
        expected_sha256 = expected_sha256.lower()
        if not _SHA256_RE.fullmatch(expected_sha256):
            raise ConfigError(f"expected_sha256 must be 64 hex digits, got {expected_sha256!r}")
    if attempts < 1 or max_bytes < 0 or timeout_s <= 0:
        raise ConfigError("attempts >= 1, max_bytes >= 0 and timeout_s > 0 required")
    if (deadline_s is not None and deadline_s <= 0) or min_rate_bps < 0 or rate_grace_s < 0:
        raise ConfigError("deadline_s > 0, min_rate_bps >= 0 and rate_grace_s >= 0 required")
    return expected_sha256


def _complete(
    opener: urllib.request.OpenerDirector,
    url: str,
    state: _Download,
    expected_sha256: str | None,
    resumed_leftover: bool,
    attempts: int,
    backoff_s: float,
    *,
    pace: _Pace,
    headers: Mapping[str, str],
    timeout_s: float,
    progress: Callable[[int, int | None], None] | None,
) -> None:
    """Attempt until the ``.part`` holds the whole body with the expected sha256 (see :func:`download`)."""
    failures = 0
    while True:
        before = state.have
        pace.check_deadline(url, state.have)
        try:
            _attempt(opener, url, state, headers=headers, timeout_s=timeout_s, progress=progress, pace=pace)
        except (_Retry, *_NETWORK_ERRORS) as exc:
            failures = 1 if state.have > before else failures + 1
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            if failures >= attempts:
                raise UnavailableError(
                    f"{url}: giving up after {failures} attempts without progress: {reason}"
                ) from exc
            log.info("%s: attempt failed (%s); retrying from byte %d", url, reason, state.have)
            time.sleep(min(backoff_s * 2 ** (failures - 1), 30.0))
            continue
        if expected_sha256 is not None and state.sha.hexdigest() != expected_sha256:
            if resumed_leftover:
                log.info("%s: a leftover .part did not lead to the expected sha256; starting over", url)
                resumed_leftover = False
                state.restart()
                continue
            raise IntegrityError(f"{url}: sha256 is {state.sha.hexdigest()}, expected {expected_sha256}")
        return


def download(
    url: str,
    dest_file: str | os.PathLike[str],
    *,
    expected_sha256: str | None,
    max_bytes: int,
    timeout_s: float,
    headers: dict[str, str] | None = None,
    attempts: int = 5,
    progress: Callable[[int, int | None], None] | None = None,
    backoff_s: float = 0.5,
    deadline_s: float | None = None,
    min_rate_bps: float = 0.0,
    rate_grace_s: float = 10.0,
) -> Path:
    """GET ``url`` into ``dest_file``; return its path.

    The body streams into ``dest_file + ".part"``. After a cut (connection
    error, timeout, short body, 5xx) the next attempt asks for
    ``Range: bytes=<have>-``; a 206 continues, a 200 (range ignored) starts
    over. ``attempts`` bounds consecutive attempts that receive nothing new;
    waits between them double from ``backoff_s``. ``timeout_s`` applies to
    connecting and to each read. More than ``max_bytes`` (announced or
    received) raises ArtifactTooLargeError. With ``expected_sha256`` a
    ``.part`` left by an earlier call is resumed, and the finished file must
    match (IntegrityError otherwise; a mismatch after resuming a leftover
    retries once from scratch); without it any leftover is discarded. The
    file is renamed onto ``dest_file`` only when complete and checked.
    Concurrent downloads to the same ``dest_file`` are not supported.

    ``deadline_s`` bounds the whole call, retries and waits included
    (DownloadDeadlineError; it is checked after every read, so it can be
    overrun by one ``timeout_s``). An attempt slower than ``min_rate_bps``
    on average after its first ``rate_grace_s`` seconds is cut and retried
    from where it stopped: a slow server cannot hold the caller forever.
    """
    expected_sha256 = _check_arguments(
        url, expected_sha256, attempts, max_bytes, timeout_s, deadline_s, min_rate_bps, rate_grace_s
    )
    pace = _Pace(deadline_s, min_rate_bps, rate_grace_s)
    dest = Path(dest_file)
    dest.parent.mkdir(parents=True, exist_ok=True)
    state = _Download(dest.with_name(dest.name + ".part"), max_bytes)
    if expected_sha256 is None:
        state.restart()  # nothing could tell a stale leftover from a good one
    resumed_leftover = expected_sha256 is not None and state.adopt_leftover()
    opener = urllib.request.build_opener(_SafeRedirects)
    try:
        _complete(
            opener, url, state, expected_sha256, resumed_leftover, attempts, backoff_s,
            pace=pace, headers=headers or {}, timeout_s=timeout_s, progress=progress,
        )  # fmt: skip
        state.part.touch()  # an empty body leaves no .part yet
        os.replace(state.part, dest)
    except BaseException as exc:
        if not isinstance(exc, (UnavailableError, KeyboardInterrupt)):  # keep what may be resumed
            state.restart()
        raise
    return dest
