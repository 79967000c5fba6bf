"""Pre-signed code uploads (wire-api 3.6 step 2): our own endpoint stands in for State Backed's S3.

The upload URL carries an HMAC-signed token naming the provisional version and an expiry, so the
upload needs no authorization header (the official client sends none). It is single-use: the store
attaches code to a provisional version only once. The body is multipart; ``content-encoding: gzip``
is honoured, and both size limits are enforced while streaming (1 MB as sent, 10 MB decompressed).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import zlib

from aiohttp import BodyPartReader, web

from .errors import InvalidParameter, NotFound

__all__ = ["MAX_COMPRESSED", "MAX_RAW", "read_upload", "sign_id", "unsign_id", "upload_token", "verify_upload_token"]

MAX_COMPRESSED = 1_000_000
MAX_RAW = 10_000_000
UPLOAD_TTL_S = 15 * 60


def _mac(secret: str, message: str) -> str:
    digest = hmac.new(secret.encode(), message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()[:32]


def sign_id(secret: str, kind: str, object_id: str) -> str:
    """The opaque, path-safe "signed ID" a provisional create returns (``<id>.<mac>``)."""
    return f"{object_id}.{_mac(secret, f'finalize:{kind}:{object_id}')}"


def unsign_id(secret: str, kind: str, signed: str) -> str:
    object_id, _, mac = signed.rpartition(".")
    if not object_id or not hmac.compare_digest(mac.encode(), _mac(secret, f"finalize:{kind}:{object_id}").encode()):
        raise NotFound("unknown signed id")
    return object_id


def upload_token(secret: str, kind: str, object_id: str, now_s: int | None = None) -> str:
    expires = (now_s if now_s is not None else int(time.time())) + UPLOAD_TTL_S
    body = f"{kind}.{object_id}.{expires}"
    return f"{body}.{_mac(secret, 'upload:' + body)}"


def verify_upload_token(secret: str, token: str, now_s: int | None = None) -> tuple[str, str]:
    """(kind, object id) of a valid, unexpired upload token."""
    body, _, mac = token.rpartition(".")
    parts = body.split(".")
    if len(parts) != 3 or not hmac.compare_digest(mac.encode(), _mac(secret, "upload:" + body).encode()):
        raise NotFound("unknown upload URL")
    kind, object_id, expires = parts
    if int(expires) < (now_s if now_s is not None else int(time.time())):
        raise NotFound("the upload URL has expired; create the version again")
    return kind, object_id


async def read_upload(request: web.Request) -> tuple[bytes, str]:
    """The uploaded file (decompressed) and its file name, from the multipart body."""
    if not request.content_type.startswith("multipart/"):
        raise InvalidParameter("the upload must be multipart/form-data", parameter="body")
    reader = await request.multipart()
    gzipped = False
    while True:
        part = await reader.next()
        if part is None:
            raise InvalidParameter("the upload has no file part", parameter="file")
        if not isinstance(part, BodyPartReader):
            continue
        if part.name == "content-encoding":
            gzipped = (await part.text()).strip().lower() == "gzip"
        elif part.name == "file":
            data = await _read_capped(part, MAX_COMPRESSED)
            filename = part.filename or "upload.js"
            if gzipped:
                data = _gunzip_capped(data, MAX_RAW)
            elif len(data) > MAX_RAW:
                raise InvalidParameter(f"the code is over {MAX_RAW} bytes", parameter="file")
            return data, filename
        else:
            await part.read()  # the echoed fields (key, policy, content-type)


async def _read_capped(part: BodyPartReader, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await part.read_chunk(65536):
        size += len(chunk)
        if size > limit:
            raise InvalidParameter(f"the upload is over {limit} bytes", parameter="file")
        chunks.append(chunk)
    return b"".join(chunks)


def _gunzip_capped(data: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise InvalidParameter(f"the upload is not valid gzip: {exc}", parameter="file") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise InvalidParameter(f"the code is over {limit} bytes once decompressed", parameter="file")
    return out
