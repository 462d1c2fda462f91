#!/usr/bin/env python3
"""Check the file known answers of docs/protocol.md 13.10 independently of
the Rust code, with Python's `cryptography` and `blake3` packages.

For key [0x07; 32] and blob id [0x09; 16]: the one chunk of the 5-byte
file "sotto" and its digest, the empty file's chunk and digest, and the
two chunks of a file of 65,537 bytes "a", each sealed with AES-256-GCM
(nonce 8 zero bytes || u32be(index), associated data
"sotto/v2/file-chunk\\0" || blob id || u32be(index) || u32be(count) ||
u64be(size)), the digest BLAKE3 in derive-key mode with the context
"sotto/v2/file-digest" over the whole plaintext. The expected values are
read from protocol.md itself (the chunk and digest lines of its known
answer) and from the crate's test (crypto/src/file/tests.rs, test
`sealing_gives_the_known_answers`), so a change to either that the other
does not follow fails here.

Usage: python3 scripts/check-file-vector.py (exit status 0 when all hold)
"""

import pathlib
import re
import struct
import sys

import blake3
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ROOT = pathlib.Path(__file__).resolve().parent.parent
LABEL = b"sotto/v2/file-chunk\0"
CHUNK = 65_536
KEY = bytes([7] * 32)
BLOB = bytes([9] * 16)


def seal(plaintext: bytes) -> tuple[list[bytes], bytes]:
    size = len(plaintext)
    count = max(1, -(-size // CHUNK))
    chunks = []
    for i in range(count):
        nonce = bytes(8) + struct.pack(">I", i)
        aad = LABEL + BLOB + struct.pack(">IIQ", i, count, size)
        part = plaintext[i * CHUNK:(i + 1) * CHUNK]
        chunks.append(AESGCM(KEY).encrypt(nonce, part, aad))
    digest = blake3.blake3(plaintext, derive_key_context="sotto/v2/file-digest").digest()
    return chunks, digest


def hexes(text: str) -> str:
    return re.sub(r"[^0-9a-f]", "", text)


def main() -> int:
    failures = []
    tests = (ROOT / "crypto/src/file/tests.rs").read_text()
    doc = (ROOT / "docs/protocol.md").read_text()
    section = doc[doc.index("### 13.10"):]
    section = section[:section.index("\n### ", 10)]
    # protocol.md's lines: "chunk 0 = ..." then the tag line, and "digest = ...".
    lines = section.splitlines()
    doc_chunk = ""
    for n, line in enumerate(lines):
        if line.startswith("chunk 0 = "):
            doc_chunk = hexes(line.split("=", 1)[1].split("cipher")[0])
            doc_chunk += hexes(lines[n + 1].split("tag")[0])
            break
    doc_digest = ""
    for line in lines:
        found = re.match(r"^digest\s*=\s*([0-9a-f]{64})\b", line)
        if found:
            doc_digest = found.group(1)
            break
    chunks, digest = seal(b"sotto")
    if chunks[0].hex() != doc_chunk:
        failures.append(f"protocol.md's chunk 0 of 'sotto': {doc_chunk} != {chunks[0].hex()}")
    if digest.hex() != doc_digest:
        failures.append(f"protocol.md's digest of 'sotto': {doc_digest} != {digest.hex()}")
    # The crate's test pins these same values, and those of the empty and
    # the two-chunk file.
    cases = {
        "sotto": b"sotto",
        "empty": b"",
        "two chunks": b"a" * (CHUNK + 1),
    }
    for name, plaintext in cases.items():
        chunks, digest = seal(plaintext)
        for chunk in chunks:
            short = chunk if len(chunk) <= 64 else chunk[:16]
            if short.hex() not in tests and chunk[-16:].hex() not in tests:
                failures.append(f"{name}: chunk {short.hex()}... not in the crate's test")
        if digest.hex() not in tests:
            failures.append(f"{name}: digest {digest.hex()} not in the crate's test")
    for failure in failures:
        print("FAIL", failure)
    if not failures:
        print("file vectors: protocol.md 13.10 and the crate's test hold (cryptography, blake3)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
