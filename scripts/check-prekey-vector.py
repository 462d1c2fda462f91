#!/usr/bin/env python3
"""Check testdata/prekey-vector.txt independently of the Rust code.

Parses the signed prekey byte by byte as docs/protocol.md ("Prekeys")
describes it, and checks with Python's `cryptography` (not the Rust `rsa`
crate): the owner's fingerprint, the PSS-SHA256 signature (salt 32) over
the transcript with the owner's identity signing key, the prekey id, that
the prekey's public key is test pool key 0 (testdata/prekey-keys.txt), the
validity window, and that the OAEP-SHA256 ciphertext opens to the stated
plaintext under the stated label with that key.

Usage: python3 scripts/check-prekey-vector.py   (exit status 0 when all hold)
"""

import hashlib
import pathlib
import sys

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

ROOT = pathlib.Path(__file__).resolve().parent.parent
TESTDATA = ROOT / "testdata"


def varint(data, at):
    """Reads a postcard (LEB128) unsigned varint; refuses over-long forms."""
    value, shift, start = 0, 0, at
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    if at - start > 1 and data[at - 1] == 0:
        raise ValueError("non-canonical varint")
    return value, at


def lbytes(data, at):
    length, at = varint(data, at)
    return data[at : at + length], at + length


def main():
    fields = dict(
        line.split(" ", 1)
        for line in (TESTDATA / "prekey-vector.txt").read_text().splitlines()
    )
    owner_public = bytes.fromhex(fields["owner_public"])
    # PublicIdentity (protocol.md 12.1): 01 || len || enc_der || len || sig_der.
    assert owner_public[0] == 1
    enc_der, at = lbytes(owner_public, 1)
    sig_der, at = lbytes(owner_public, at)
    assert at == len(owner_public)
    fingerprint = hashlib.sha256(
        b"sotto/v1/fingerprint\0"
        + len(enc_der).to_bytes(4, "big")
        + enc_der
        + len(sig_der).to_bytes(4, "big")
        + sig_der
    ).digest()
    assert fingerprint.hex() == fields["owner_fingerprint"], "fingerprint"

    signed = bytes.fromhex(fields["signed_prekey"])
    assert len(signed) <= 1024
    assert signed[0] == 0x02, "PREKEY_VERSION"
    owner = signed[1:33]
    created_at, at = varint(signed, 33)
    expires_at, at = varint(signed, at)
    public_der, at = lbytes(signed, at)
    prekey_end = at
    signature, at = lbytes(signed, at)
    assert at == len(signed), "trailing bytes"
    assert owner == fingerprint, "owner"
    assert created_at == int(fields["created_at"])
    assert expires_at == int(fields["expires_at"])
    assert 0 < expires_at - created_at <= 7 * 24 * 60 * 60, "lifetime"
    assert len(signature) == 384

    transcript = b"sotto/v2/prekey\0" + signed[1:prekey_end]
    owner_sig_key = serialization.load_der_public_key(sig_der)
    owner_sig_key.verify(
        signature,
        transcript,
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
        hashes.SHA256(),
    )

    prekey_public = serialization.load_der_public_key(public_der)
    numbers = prekey_public.public_numbers()
    assert numbers.n.bit_length() == 3072 and numbers.e == 65537, "key rules"
    assert public_der not in (enc_der, sig_der), "an identity key"
    prekey_id = hashlib.sha256(b"sotto/v2/prekey-id\0" + public_der).digest()[:16]
    assert prekey_id.hex() == fields["prekey_id"], "prekey id"

    pool = [
        line
        for line in (TESTDATA / "prekey-keys.txt").read_text().splitlines()
        if not line.startswith("#")
    ]
    private = serialization.load_der_private_key(bytes.fromhex(pool[0]), None)
    assert private.public_key().public_numbers() == numbers, "pool key 0"
    opened = private.decrypt(
        bytes.fromhex(fields["oaep_ciphertext"]),
        padding.OAEP(
            mgf=padding.MGF1(hashes.SHA256()),
            algorithm=hashes.SHA256(),
            label=bytes.fromhex(fields["oaep_label"]),
        ),
    )
    assert opened.hex() == fields["oaep_plaintext"], "OAEP"
    print("prekey vector: fingerprint, PSS signature, id, key rules and OAEP all check")
    return 0


if __name__ == "__main__":
    sys.exit(main())
