"""Page-batch codecs: RAW (as is) and LZ4 (one LZ4 block per batch).

A batch is the concatenated bytes of the pages of one PAGES message. LZ4 runs
in block mode over the whole batch rather than per page, so that repeats
across pages are found and the per-call overhead is paid once per message.
The block carries no size prefix (`store_size=False`): the decoded size is the
header's raw_len.

Zero pages are not a codec: the sender detects them and sends ZERO_PAGES
messages (page numbers only), see emulator.wire.protocol.

These functions hold no state, and python-lz4's block functions release the
GIL, so they can be called from several worker threads at once.
"""

from __future__ import annotations

import types
from typing import Any

import lz4.block

from emulator.wire.protocol import Codec, Flags, LocalProtocolError, RemoteProtocolError

__all__ = ["CODEC_NAMES", "codec_from_name", "codec_name", "encode_batch", "decode_batch"]

#: Command-line / HELLO names of the codecs.
CODEC_NAMES: types.MappingProxyType[str, Codec] = types.MappingProxyType(
    {"raw": Codec.RAW, "lz4": Codec.LZ4}
)
_NAME_OF = {codec: name for name, codec in CODEC_NAMES.items()}


def codec_from_name(name: str) -> Codec:
    """Return the codec called `name` ("raw" or "lz4").

    Raises ValueError naming the value and the known names.
    """
    try:
        return CODEC_NAMES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown codec {name!r}, expected one of {', '.join(CODEC_NAMES)}"
        ) from None


def codec_name(codec: Codec) -> str:
    """Return the name of `codec`, as accepted by `codec_from_name`."""
    return _NAME_OF[Codec(codec)]


def _nbytes(buffer: Any) -> int:
    return memoryview(buffer).nbytes


def encode_batch(codec: Codec, raw: Any) -> tuple[Codec, Flags, Any]:
    """Encode one batch of page bytes.

    Args:
        codec: the codec asked for.
        raw: the batch bytes, any C-contiguous buffer-protocol object.

    Returns:
        (codec used, flags, payload). With RAW, payload is `raw` itself (no
        copy). With LZ4, payload is the compressed block, unless it is not
        smaller than `raw`: then `raw` itself is returned with Codec.RAW and
        Flags.RAW_FALLBACK (incompressible pages cost no extra bytes).
    """
    codec = Codec(codec)
    if codec == Codec.RAW:
        return Codec.RAW, Flags.NONE, raw
    if codec == Codec.LZ4:
        raw_len = _nbytes(raw)
        packed = lz4.block.compress(raw, store_size=False)
        if len(packed) >= raw_len:
            return Codec.RAW, Flags.RAW_FALLBACK, raw
        return Codec.LZ4, Flags.NONE, packed
    raise LocalProtocolError("codec", f"no encoder for codec {codec!r}")


def decode_batch(codec: Codec, payload: Any, raw_len: int) -> Any:
    """Decode one batch of page bytes.

    Args:
        codec: codec of the payload (from the message header).
        payload: the encoded bytes, any buffer-protocol object.
        raw_len: expected decoded size in bytes. The decoder allocates this
            much for LZ4, so it must already be bounded (Decoder.decode checks
            it against max_payload_bytes).

    Returns:
        A bytes-like object of exactly raw_len bytes: `payload` itself for RAW
        (no copy), new bytes for LZ4.

    Raises:
        RemoteProtocolError(field="payload") if the payload is corrupt or does
        not decode to exactly raw_len bytes; field="codec" for an unknown codec.
    """
    try:
        codec = Codec(codec)
    except ValueError:
        raise RemoteProtocolError("codec", f"got {codec!r}, expected one of {list(Codec)}") from None
    if codec == Codec.RAW:
        size = _nbytes(payload)
        if size != raw_len:
            raise RemoteProtocolError("payload", f"RAW payload of {size} bytes, expected raw_len {raw_len}")
        return payload
    # python-lz4 (4.x) has no block decompress into a caller's buffer, so this
    # allocates raw_len bytes; the receiver then scatters them into guest
    # memory (one copy either way).
    try:
        data = lz4.block.decompress(payload, uncompressed_size=raw_len)
    except (lz4.block.LZ4BlockError, ValueError, OverflowError) as exc:
        raise RemoteProtocolError("payload", f"corrupt LZ4 block: {exc}") from None
    # uncompressed_size is only an upper bound for lz4: a block that decodes
    # short is returned without complaint, so the size is checked here.
    if len(data) != raw_len:
        raise RemoteProtocolError(
            "payload", f"LZ4 block decoded to {len(data)} bytes, expected raw_len {raw_len}"
        )
    return data
