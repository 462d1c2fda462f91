#!/usr/bin/env python3
"""Checks that each hostile-relay scenario would catch the loss of its defence.

For each scenario of tests/tests/hostile_relay.rs, takes its defence out of
the code (one small source patch), runs that scenario's test, and puts the
file back. Every test must FAIL with its defence removed. A patch that no
longer applies (the code moved) is reported as PATCH-NOT-FOUND: update it.

Usage: scripts/check-defences.py [s01 s02 ...]    (from anywhere; ~10 min)
Never run it while editing the patched files: it rewrites them briefly.
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# s04 and s11 rely on the same defence.
SIGNATURE_FIRST = ("crypto/src/session.rs", """        sender
            .verify(
                &announcement_transcript(context, &announcement.wrapped_key),
                &announcement.signature,
            )
            .map_err(|_| Error::DecryptionFailed)?;""", """        let _ = sender.verify(
            &announcement_transcript(context, &announcement.wrapped_key),
            &announcement.signature,
        );""", "accept verifies the signature before RSA decryption")

M = [
 ("s01", "client/src/contacts.rs", "if digits != expected.digits() && !expected.matches_qr(compared) {", "if false {", "mark_verified compares the safety number"),
 ("s02", "client/src/contacts.rs", """            Trust::Changed { .. } => Err(Blocked::KeyChanged {
                name: contact.name.to_string(),
            }),""", """            Trust::Changed { .. } => Ok(&contact.identity),""", "sendable refuses a changed verified key"),
 ("s03", "client/src/session/engine/outbound.rs", "if !verified_only || contact.is_some_and(|c| c.trust == Trust::Verified) =>", "if true =>", "verified-only rooms wrap only to verified members"),
 ("s04",) + SIGNATURE_FIRST,
 ("s05", "client/src/session/engine/inbound.rs", """        if epoch <= inbound.max_epoch
            || inbound""", """        if false
            && inbound""", "no rollback: older or known announcements are dropped before RSA"),
 ("s06", "client/src/session/engine/placement.rs", """        if late
            && let Some(placed)""", """        if false
            && let Some(placed)""", "late messages are placed before their sender's next one"),
 ("s07", "client/src/session/engine/inbound.rs", "        if missing > 0 {", "        if false {", "gaps are reported as Missing"),
 ("s08", "client/src/session/engine/inbound.rs", "        if header.conversation != conversation\n            || !self.admits(", "        if !self.admits(", "a message's header must name the conversation it came in"),
 ("s09", "client/src/session/engine/inbound.rs", "        if contact.identity.fingerprint() == claimed {", "        if true {", "the sender's key must be the one pinned for the name the relay gives"),
 ("s10", "crypto/src/message.rs", "        let digest = message_digest(body.header, body.ciphertext);", "        let digest = message_digest(body.header, &[]);", "the key slot authenticates the digest of header and ciphertext"),
 ("s11",) + SIGNATURE_FIRST,
 ("s12", "client/src/session/engine/rooms.rs", """            PresenceEvent::Left => {
                entry.members.remove(&user.key());""", """            PresenceEvent::Left => {""", "a member who left is no longer a recipient (keys rotate)"),
 ("s13", "proto/src/codec.rs", "    if version != PROTOCOL_VERSION {", "    if false {", "frames of another protocol version are refused"),
 ("s14", "client/src/session/engine/rooms.rs", "        if roster == current || entry.views.iter().any(|(d, _)| *d == roster) {", "        if true {", "each message's roster digest is compared with the member's views"),
 ("s15", "proto/src/codec.rs", """        check_len(len)?;
        if len > self.max_len {""", """        if false {""", "the frame length is checked before reading or allocating"),
 ("s16", "client/src/session/engine/inbound.rs", """        let Ok(arrival) = receiving.window.accept(opened.seq) else {
            // A duplicate (or too old to place): dropped quietly.
            return Handled::Done;
        };""", """        let arrival = receiving.window.accept(opened.seq).unwrap_or(Arrival::Late);""", "the replay window drops a message already seen"),
 ("s18", "client/src/session/connection.rs", """                    Err(mpsc::error::TrySendError::Full(_)) => continue,""", """                    Err(mpsc::error::TrySendError::Full(presence)) => presence,""", "presence notices are dropped, not waited for, when the front end is behind"),
 ("s17", "client/src/session/engine/inbound.rs", """        if !self.take_verification() {""", """        if !self.take_token(sender.fingerprint()) {
            return Handled::Done;
        }
        if !self.take_verification() {""", "a sender's announcement allowance is charged only once its signature verified"),
]
only = sys.argv[1:] 
results = []
for test, path, old, new, what in M:
    if only and test not in only: continue
    full = f"{ROOT}/{path}"
    src = open(full).read()
    if src.count(old) != 1:
        results.append((test, what, "PATCH-NOT-FOUND")); print(test, "patch not found", flush=True); continue
    if test == "s10":
        # seal too, so that the honest path still works without the defence
        src2 = src.replace(old, new).replace("let digest = message_digest(&header, body.get(start..).unwrap_or_default());", "let digest = message_digest(&header, &[]);")
    else:
        src2 = src.replace(old, new)
    open(full, 'w').write(src2)
    try:
        r = subprocess.run(["timeout", "400", "cargo", "test", "-q", "-p", "sotto-tests", "--test", "hostile_relay", test], cwd=ROOT, capture_output=True, text=True)
        out = r.stdout + r.stderr
        if "error[" in out or "could not compile" in out:
            status = "COMPILE-ERROR"
        elif "test result: FAILED" in out:
            status = "FAILED (as it must)"
        elif "test result: ok" in out:
            status = "PASSED (defence not covered!)"
        else:
            status = f"rc={r.returncode}"
        if status != "FAILED (as it must)":
            print(out[-4000:], flush=True)
    finally:
        open(full, 'w').write(src)
    results.append((test, what, status)); print(test, status, flush=True)
print(json.dumps(results, indent=1))
sys.exit(0 if all(r[2] == "FAILED (as it must)" for r in results) else 1)
