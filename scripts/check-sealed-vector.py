#!/usr/bin/env python3
"""Check testdata/sealed-message.json independently of the Rust code.

Follows docs/protocol.md (sections 13-16 and 24.2) byte by byte, with
Python's `cryptography` and `blake3` packages (not the Rust crates):

1. Bob's signed prekey: its owner, its PSS signature by Bob's identity key,
   its id, and that its key is test pool key 1.
2. Alice's announcement to Bob: the context, the leaf, the audit path to
   the root of a batch of two, and Alice's PSS signature over
   "sotto/v2/announce\\0" || u32be(size) || root; then the OAEP unwrapping
   with the prekey's private half (label "sotto/v2/session-key\\0" ||
   postcard(context)) into the pair key S and the chain key CK_0.
3. Both messages: the header fields, the roster digest of {Alice, Bob,
   Carol}, the BLAKE3 message digest D, the slot opened with AES-256-GCM
   under S (nonce 00000000 || u64be(seq), associated data "sotto/v2/slot\\0"
   || D || Bob's fingerprint), the chain step giving MK_seq, K = slot
   plaintext XOR MK_seq, the commitment, and the AES-256-CTR body with its
   exact padding.
4. Bob's pair reply: HKDF-SHA256 of S (salt "sotto/v2/pair-reply\\0", info
   postcard(reply context)), AES-256-GCM with the reply's nonce and
   associated data "sotto/v2/pair-reply\\0" || postcard(context), opening to
   64 bytes.

Usage: python3 scripts/check-sealed-vector.py [--explain]
(exit status 0 when all hold; --explain prints the intermediate values
that docs/protocol.md 24.2 shows).
"""

import hashlib
import json
import pathlib
import sys

import blake3
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

ROOT = pathlib.Path(__file__).resolve().parent.parent
TESTDATA = ROOT / "testdata"
EXPLAIN = "--explain" in sys.argv[1:]

PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


def show(name, value):
    if EXPLAIN:
        print(f"{name:<22} {value.hex() if isinstance(value, bytes) else value}")


class Reader:
    """postcard (protocol.md 3): LEB128 varints, length-prefixed bytes."""

    def __init__(self, data):
        self.data, self.at = data, 0

    def raw(self, n):
        out = self.data[self.at : self.at + n]
        assert len(out) == n, "truncated"
        self.at += n
        return out

    def varint(self):
        value, shift, start = 0, 0, self.at
        while True:
            byte = self.raw(1)[0]
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if self.at - start > 1 and self.data[self.at - 1] == 0:
            raise ValueError("non-canonical varint")
        return value

    def bytes(self):
        return self.raw(self.varint())

    def end(self):
        assert self.at == len(self.data), "trailing bytes"


def conversation(r):
    tag = r.varint()
    if tag == 0:
        return ("room", r.bytes().decode())
    assert tag == 1
    return ("direct", r.raw(32), r.raw(32))


def context(r):
    """SessionContext v2 (protocol.md 13.4); returns (fields, its bytes)."""
    start = r.at
    c = {
        "conversation": conversation(r),
        "sender": r.raw(32),
        "recipient": r.raw(32),
        "session_id": r.raw(16),
        "epoch": r.varint(),
        "first_seq": r.varint(),
        "created_at": r.varint(),
    }
    via = r.varint()
    if via == 0:
        c["via"] = ("prekey", r.raw(16))
    elif via == 1:
        c["via"] = ("identity",)
    else:
        assert via == 2, "Via"
        c["via"] = ("reply", r.raw(16))
    return c, r.data[start : r.at]


def varint_bytes(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def sha256(*parts):
    return hashlib.sha256(b"".join(parts)).digest()


def identity(hex_public):
    """PublicIdentity (protocol.md 12.1) -> (enc key, sig key, fingerprint)."""
    r = Reader(bytes.fromhex(hex_public))
    assert r.raw(1) == b"\x01"
    enc_der, sig_der = r.bytes(), r.bytes()
    r.end()
    fp = sha256(b"sotto/v1/fingerprint\0", len(enc_der).to_bytes(4, "big"), enc_der,
                len(sig_der).to_bytes(4, "big"), sig_der)
    return (serialization.load_der_public_key(enc_der),
            serialization.load_der_public_key(sig_der), fp)


def node(left, right):
    return sha256(b"sotto/v2/announce-node\0", left, right)


def root_from_path(leaf, index, size, path):
    """RFC 9162 2.1.3.2, with our node hash."""
    assert index < size
    f, s, r = index, size - 1, leaf
    for sibling in path:
        assert s != 0, "path too long"
        if f & 1 or f == s:
            r = node(sibling, r)
            while not f & 1 and f != 0:
                f >>= 1
                s >>= 1
        else:
            r = node(r, sibling)
        f >>= 1
        s >>= 1
    assert s == 0, "path too short"
    return r


def chain_step(ck):
    """CK_{n+1} || MK_n = BLAKE3-keyed(CK_n, "sotto/v2/chain-step"), 64 bytes."""
    out = blake3.blake3(b"sotto/v2/chain-step", key=ck).digest(length=64)
    return out[:32], out[32:]


def roster(fingerprints):
    members = sorted(set(fingerprints))
    return sha256(b"sotto/v2/roster\0", len(members).to_bytes(4, "big"), *members)


def main():
    v = json.loads((TESTDATA / "sealed-message.json").read_text())
    ids = json.loads((TESTDATA / "identities.json").read_text())
    _, alice_sig, alice_fp = identity(ids["alice_public"])
    _, bob_sig, bob_fp = identity(ids["bob_public"])
    carol_fp = bytes.fromhex(v["carol_fingerprint"])
    pool = [l for l in (TESTDATA / "prekey-keys.txt").read_text().splitlines()
            if not l.startswith("#")]
    prekey_private = serialization.load_der_private_key(bytes.fromhex(pool[1]), None)

    # 1. Bob's signed prekey (protocol.md 12.6).
    signed = bytes.fromhex(v["bob_prekey"])
    r = Reader(signed)
    assert r.raw(1) == b"\x02"
    assert r.raw(32) == bob_fp, "prekey owner"
    created_at, expires_at = r.varint(), r.varint()
    public_der = r.bytes()
    prekey_end = r.at
    bob_sig.verify(r.bytes(), b"sotto/v2/prekey\0" + signed[1:prekey_end], PSS, hashes.SHA256())
    r.end()
    assert created_at == v["created_at"] and expires_at == created_at + 7 * 86400
    assert serialization.load_der_public_key(public_der).public_numbers() == \
        prekey_private.public_key().public_numbers(), "pool key 1"
    prekey_id = sha256(b"sotto/v2/prekey-id\0", public_der)[:16]
    show("prekey_id", prekey_id)

    # 2. The announcement (protocol.md 13.5, 14.1-14.2).
    r = Reader(bytes.fromhex(v["announcement"]))
    assert r.raw(2) == b"\x02\x00", "PEER_VERSION 2, PeerBody::Announcement"
    ctx, ctx_bytes = context(r)
    wrapped = r.bytes()
    index, size = r.varint(), r.varint()
    path = [r.raw(32) for _ in range(r.varint())]
    signature = r.bytes()
    r.end()
    assert ctx["conversation"] == ("room", v["room"])
    assert (ctx["sender"], ctx["recipient"]) == (alice_fp, bob_fp)
    assert (ctx["epoch"], ctx["first_seq"], ctx["created_at"]) == (3, 0, v["created_at"])
    assert ctx["via"] == ("prekey", prekey_id)
    assert len(wrapped) == 384 and len(signature) == 384
    leaf = sha256(b"sotto/v2/announce-leaf\0", ctx_bytes, varint_bytes(len(wrapped)), wrapped)
    root = root_from_path(leaf, index, size, path)
    assert (index, size, len(path)) == (0, 2, 1)
    show("context", ctx_bytes)
    show("leaf", leaf)
    show("path[0]", path[0])
    show("root", root)
    # Signature first: verified before any decryption.
    alice_sig.verify(signature, b"sotto/v2/announce\0" + size.to_bytes(4, "big") + root,
                     PSS, hashes.SHA256())
    secret = prekey_private.decrypt(wrapped, padding.OAEP(
        mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(),
        label=b"sotto/v2/session-key\0" + ctx_bytes))
    assert len(secret) == 64
    pair_key, ck = secret[:32], secret[32:]
    show("S (pair key)", pair_key)
    show("CK_0", ck)

    # 3. The messages (protocol.md 13.6-13.7, 15, 16).
    everyone = roster([alice_fp, bob_fp, carol_fp])
    show("roster", everyone)
    for seq, prefix in [(0, ""), (1, "second_")]:
        body = bytes.fromhex(v[prefix + "body"])
        r = Reader(body)
        assert r.raw(2) == b"\x02\x01", "PEER_VERSION 2, PeerBody::Message"
        header = r.bytes()
        ciphertext = r.bytes()
        r.end()
        h = Reader(header)
        assert h.raw(1) == b"\x02", "header version 2"
        assert conversation(h) == ("room", v["room"])
        assert h.raw(32) == alice_fp
        assert h.raw(16) == ctx["session_id"]
        assert h.varint() == 3 and h.varint() == seq
        assert h.raw(32) == everyone, "roster digest"
        commitment = h.raw(32)
        h.end()
        assert len(ciphertext) % 64 == 0 and len(ciphertext) >= 64
        digest = blake3.blake3(len(header).to_bytes(4, "big") + header + ciphertext,
                               derive_key_context="sotto/v2/message").digest()
        slot = bytes.fromhex(v[prefix + "slot"])
        assert len(slot) == 80 and slot[:32] == bob_fp
        nonce = bytes(4) + seq.to_bytes(8, "big")
        share = AESGCM(pair_key).decrypt(nonce, slot[32:], b"sotto/v2/slot\0" + digest + bob_fp)
        # Only now is the chain asked: CK_seq -> (CK_{seq+1}, MK_seq).
        ck_in = ck
        ck, mk = chain_step(ck)
        key = bytes(a ^ b for a, b in zip(share, mk))
        assert sha256(b"sotto/v2/commit\0", key) == commitment, "commitment"
        plain = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).decryptor().update(ciphertext)
        sent_at = int.from_bytes(plain[:8], "little")
        length = int.from_bytes(plain[8:12], "little")
        assert len(plain) == -(-(12 + length) // 64) * 64, "padded length"
        assert plain[12 + length:] == bytes(len(plain) - 12 - length), "zero padding"
        assert plain[12:12 + length].decode() == v[prefix + "plaintext"]
        assert sent_at == v[prefix + "sent_at_ms"]
        show(f"[{seq}] header", header)
        show(f"[{seq}] D", digest)
        show(f"[{seq}] nonce", nonce)
        show(f"[{seq}] slot plaintext", share)
        show(f"[{seq}] CK_{seq}", ck_in)
        show(f"[{seq}] CK_{seq + 1}", ck)
        show(f"[{seq}] MK_{seq}", mk)
        show(f"[{seq}] K", key)
        show(f"[{seq}] commitment", commitment)
        show(f"[{seq}] padded plaintext", plain)

    # 4. Bob's pair reply (protocol.md 13.x PairReply, 14.5).
    r = Reader(bytes.fromhex(v["reply"]))
    assert r.raw(2) == b"\x02\x02", "PEER_VERSION 2, PeerBody::PairReply"
    reply_ctx, reply_bytes = context(r)
    reply_nonce = r.raw(12)
    sealed = r.bytes()
    r.end()
    assert (reply_ctx["sender"], reply_ctx["recipient"]) == (bob_fp, alice_fp)
    assert reply_ctx["via"] == ("reply", ctx["session_id"])
    label = b"sotto/v2/pair-reply\0"
    reply_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=label,
                     info=reply_bytes).derive(pair_key)
    reply_secret = AESGCM(reply_key).decrypt(reply_nonce, sealed, label + reply_bytes)
    assert len(reply_secret) == 64
    show("reply context", reply_bytes)
    show("reply key", reply_key)
    show("reply secret", reply_secret)
    print("sealed-message vector: prekey, batch signature, unwrap, chain steps, slots, "
          "commitments, bodies and pair reply all check")
    return 0


if __name__ == "__main__":
    sys.exit(main())
