#!/usr/bin/env python3
"""Checks that each defence against a hostile relay would be caught if lost.

For each entry, takes its defence out of the code (one small source patch),
runs the test that covers it, and puts the file back. Every test must FAIL
with its defence removed. A patch that no longer applies (the code moved) is
reported as PATCH-NOT-FOUND, one that does not compile as COMPILE-ERROR, a
test filter that runs no test as NO-TEST-RAN: update the entry.

An entry is a dict made by `hostile()` (a scenario `sNN` of
tests/tests/hostile_relay.rs: its test is named by the scenario) or by
`entry()` (any test: its package, its test target, `--test NAME`, `--lib`
or `--bin NAME`, its name filter, and any extra cargo arguments or
environment it needs).

Usage: scripts/check-defences.py [NAME ...]   (from anywhere; ~12 min for all)
NAME is an entry's name (s01, pin-verifier, ...); none runs every entry.
Never run it while editing the patched files: it rewrites them briefly.
"""
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def entry(name, path, old, new, what, package, target, test,
          cargo=(), env=None, also=(), elsewhere=()):
    """Removing `old` (-> `new`) from `path` must make `test` fail.

    `also`: more (old, new) replacements in the same file, applied with the
    first (so that the honest side still works without the defence);
    `elsewhere`: (path, old, new) replacements in other files, likewise."""
    return {"name": name, "path": path, "patches": [(old, new), *also],
            "elsewhere": [tuple(e) for e in elsewhere],
            "what": what, "package": package, "target": list(target),
            "test": test, "cargo": list(cargo), "env": env or {}}


def hostile(name, path, old, new, what, also=(), elsewhere=()):
    """A scenario of tests/tests/hostile_relay.rs, whose test is `name`."""
    return entry(name, path, old, new, what, "sotto-tests",
                 ["--test", "hostile_relay"], name, also=also,
                 elsewhere=elsewhere)


def patches_by_file(e):
    """Every file `e` patches, with its (old, new) replacements."""
    files = {e["path"]: list(e["patches"])}
    for path, old, new in e.get("elsewhere", []):
        files.setdefault(path, []).append((old, new))
    return files


# s04 and s11 rely on the same defence.
SIGNATURE_FIRST = ("crypto/src/session/announce.rs", """        sender.verify(
            &batch_transcript(announcement.size, &root),
            &announcement.signature,
        )?;""", """        let _ = sender.verify(
            &batch_transcript(announcement.size, &root),
            &announcement.signature,
        );""", "accepting an announcement verifies the batch signature before RSA decryption")

ENTRIES = [
 # The hostile-relay scenarios (tests/tests/hostile_relay.rs).
 hostile("s01", "client/src/contacts.rs", "if digits != expected.digits() && !expected.matches_qr(compared) {", "if false {", "mark_verified compares the safety number"),
 hostile("s02", "client/src/contacts.rs", """            Trust::Changed { .. } => Err(Blocked::KeyChanged {
                name: contact.name.to_string(),
            }),""", """            Trust::Changed { .. } => Ok(&contact.identity),""", "sendable refuses a changed verified key"),
 hostile("s03", "client/src/session/engine/outbound.rs", "if !verified_only || contact.is_some_and(|c| c.trust == Trust::Verified) =>", "if true =>", "verified-only rooms wrap only to verified members"),
 hostile("s04", *SIGNATURE_FIRST),
 hostile("s05", "client/src/session/engine/inbound.rs", """        if context.epoch <= inbound.max_epoch
            || inbound""", """        if false
            && inbound""", "no rollback: older or known announcements are dropped before RSA"),
 hostile("s06", "client/src/session/engine/placement.rs", """        if late
            && let Some(placed)""", """        if false
            && let Some(placed)""", "late messages are placed before their sender's next one"),
 hostile("s07", "client/src/session/engine/inbound.rs", "        if missing > 0 {\n            out.update(Update::Missing {\n                chat: chat.clone(),\n                from: entry.from.clone(),", "        if false {\n            out.update(Update::Missing {\n                chat: chat.clone(),\n                from: entry.from.clone(),", "gaps are reported as Missing"),
 hostile("s08", "client/src/session/engine/inbound.rs", "        if header.conversation != conversation\n            || !self.admits(", "        if !self.admits(", "a message's header must name the conversation it came in"),
 hostile("s09", "client/src/session/engine/inbound.rs", "        if contact.identity.fingerprint() == claimed {", "        if true {", "the sender's key must be the one pinned for the name the relay gives"),
 hostile("s10", "crypto/src/session/receiving.rs", "        let digest = message_digest(body.header, body.ciphertext);", "        let digest = message_digest(body.header, &[]);", "the key slot authenticates the digest of header and ciphertext",
         # seal too, so that the honest path still works without the defence
         elsewhere=[("crypto/src/session/sending.rs", "let digest = message_digest(&header, body.get(start..).unwrap_or_default());", "let digest = message_digest(&header, &[]);")]),
 hostile("s11", *SIGNATURE_FIRST),
 hostile("s12", "client/src/session/engine/rooms.rs", """        if change == PresenceChange::Left {
            entry.members.remove(&user.key());""", """        if false {""", "a member who left is no longer a recipient (no more slots for it)"),
 hostile("s13", "proto/src/codec.rs", "    if version != PROTOCOL_VERSION {", "    if false {", "frames of another protocol version are refused"),
 hostile("s14", "client/src/session/engine/rooms.rs", "        if roster == current || entry.views.iter().any(|(d, _)| *d == roster) {", "        if true {", "each message's roster digest is compared with the member's views"),
 hostile("s15", "proto/src/codec.rs", """        check_len(len)?;
        if len > self.max_len {""", """        if false {""", "the frame length is checked before reading or allocating"),
 hostile("s16", "client/src/session/engine/inbound.rs", "        let Ok(arrival) = receiving.window.accept(opened.seq) else {", "        let Ok(arrival) = receiving.window.accept(opened.seq).or_else(|_| Ok::<_, ()>(Arrival::Late)) else {", "the replay window drops a message already seen (with the chain's forgetting, which since sessions v2 stops a replay first: both are taken out)",
         elsewhere=[("crypto/src/session/receiving.rs", "        self.chain.forget(n)\n    }", "        let _ = n;\n        Ok(())\n    }")]),
 hostile("s20", "client/src/session/engine/delivery.rs", "    pub(super) fn send_due_heartbeats(&mut self, now: Instant, out: &mut Out) {\n        if !self.connected {", "    pub(super) fn send_due_heartbeats(&mut self, now: Instant, out: &mut Out) {\n        if true {", "a sender whose message is not receipted in time sends a heartbeat, so a withheld tail shows as a gap"),
 hostile("s21", "client/src/session/engine/mod.rs", "        self.request_missing_keys(now, out);", "", "a message whose session announcement never came is asked for again"),
 hostile("s19", "client/src/session/engine/delivery.rs", "                    if pending {\n                        record.state = 1;\n                    }", "                    if pending {\n                        record.state = 1;\n                        record.delivered = record.recipients.iter().map(|(_, fp)| *fp).collect();\n                    }", "a message is marked delivered only by its recipients' own receipts, never by the relay's Sent"),
 hostile("s18", "client/src/session/connection.rs", """                presence @ Update::Presence { .. } => match self.updates.try_send(presence) {
                    Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                },""", """                presence @ Update::Presence { .. } => {
                    if self.updates.send(presence).await.is_err() {
                        return false;
                    }
                }""", "presence notices are dropped, not waited for, when the front end is behind"),
 hostile("s17", "client/src/session/engine/inbound.rs", """        if !self.take_verification() {""", """        if !self.take_token(sender.fingerprint()) {
            return Handled::Done;
        }
        if !self.take_verification() {""", "a sender's announcement allowance is charged only once its signature verified"),
]

# Defences against the relay whose tests are outside the hostile suite.
TLS = "client/src/tls.rs"
HANDOVER_UNIT = dict(package="sotto-client", target=["--lib"],
                     test="a_handover_verifies_only_for_its_keys_its_time_and_its_signature")
RELAY_KEY = dict(package="sotto-tests", target=["--test", "relay_key"])
ENGINE_UNIT = dict(package="sotto-client", target=["--lib"])
FILE = "crypto/src/file.rs"
PREKEY = "crypto/src/prekey.rs"

ENTRIES += [
 entry("pin-verifier", TLS,
       "let pinned = key == self.expected || certificate_fingerprint(end_entity) == self.expected;",
       "let pinned = true;",
       "the TLS verifier accepts only the pinned key (or old certificate pin)",
       "sotto-tests", ["--test", "relay_key"], "the_pinned_connector_accepts_only_the_pinned_key_or_certificate"),
 entry("pin-session", TLS, """    } else {
        PinMatch::Neither
    };""", """    } else {
        PinMatch::Key
    };""", "a session takes a key other than the pinned one only with a hand-over",
       test="an_unsigned_key_change_is_refused_naming_both_keys_with_nothing_sent", **RELAY_KEY),
 entry("handover-signature", TLS, """    if verified {
        Ok(())""", """    if verified || !verified {
        Ok(())""", "a hand-over's signature by the pinned key is verified", **HANDOVER_UNIT),
 entry("handover-expiry", TLS, "    if now > handover.not_after {", "    if false {",
       "an expired hand-over is refused", **HANDOVER_UNIT),
 entry("handover-from-pin", TLS, "    if old != *pin {", "    if false {",
       "a hand-over must be from the pinned key", **HANDOVER_UNIT),
 entry("handover-to-presented", TLS, "    if handover.new_key != *presented {", "    if false {",
       "a hand-over must be to the key the relay presented", **HANDOVER_UNIT),
 entry("handshake-timeout", TLS, "    let stream = tokio::time::timeout(timeouts.handshake, handshake)",
       "    let stream = tokio::time::timeout(std::time::Duration::MAX, handshake)",
       "the TLS handshake is time-limited",
       test="a_relay_that_accepts_and_never_answers_times_out_and_is_retried", **RELAY_KEY),
 entry("cluster-hosts-pinned", "client/src/session/connection.rs",
       """            Err(End::Fatal(reason)) => {
                session.state(Connection::Failed { reason }).await;
                break;
            }
            Err(End::Quit) => break,""",
       """            Err(End::Fatal(reason)) => {
                session.host = session.host.wrapping_add(1);
                reason
            }
            Err(End::Quit) => break,""",
       "a host of a cluster's address that presents another key ends the session, not skipped for the next host",
       test="every_host_of_a_cluster_address_must_present_the_pinned_key", **RELAY_KEY),
 entry("cluster-ack-own-only", "server/src/cluster/inbox.rs",
       "                .filter(|id| entry.outstanding.remove(id))",
       """                .filter(|id| {
                    entry.outstanding.remove(id);
                    true
                })""",
       "in a cluster, an Ack deletes only deliveries sent to the acknowledging user on its connection",
       package="sotto-tests", target=["--test", "cluster"],
       test="only_its_recipient_can_acknowledge_a_delivery_in_a_cluster"),
 entry("write-deadline", "client/src/session/connection.rs",
       "        match tokio::time::timeout_at(until.into(), framed.feed(frame)).await {",
       "        match tokio::time::timeout(std::time::Duration::MAX, framed.feed(frame)).await {",
       "writes to the relay finish within the write and dead-connection limits",
       test="a_relay_that_stops_reading_is_given_up_within_the_dead_connection_bound",
       also=[("    match tokio::time::timeout_at(until.into(), SinkExt::<ClientFrame>::flush(framed)).await {",
              "    match tokio::time::timeout(std::time::Duration::MAX, SinkExt::<ClientFrame>::flush(framed)).await {")],
       **RELAY_KEY),
 entry("session-age", "crypto/src/session.rs",
       "        self.created_at <= now.saturating_add(skew) && now.saturating_sub(self.created_at) <= oldest",
       "        true || self.created_at <= now.saturating_add(skew) && now.saturating_sub(self.created_at) <= oldest",
       "a session's age is enforced on receipt (announcement and messages)",
       test="sessions_made_long_ago_or_in_the_future_are_refused_on_receipt", **ENGINE_UNIT),
 entry("session-age-accept", "crypto/src/session/announce.rs", """        if !context.is_current(now) {
            return Err(Error::DecryptionFailed);
        }""", "", "accepting an announcement refuses a session too old or from the future, before RSA",
       "sotto-crypto", ["--lib"], "an_announcement_too_old_or_from_the_future_is_refused_opaquely_before_rsa"),
 entry("announce-signature-first", *SIGNATURE_FIRST, "sotto-crypto", ["--test", "sessions"],
       "unsigned_announcement_never_reaches_rsa_decryption"),
 entry("session-age-allowance", "client/src/session/engine/inbound.rs", """        if !verified.context().is_current(now) {
            return self.reject(delivery, out);
        }""", "", "a signed but out-of-date announcement is refused before it spends its sender's allowance",
       test="sessions_made_long_ago_or_in_the_future_are_refused_on_receipt", **ENGINE_UNIT),
 entry("session-age-message", "client/src/session/engine/inbound.rs",
       "        if !receiving.session.is_current(now_secs()) {", "        if false {",
       "a kept session past its age opens no message",
       test="sessions_made_long_ago_or_in_the_future_are_refused_on_receipt", **ENGINE_UNIT),
 entry("batch-no-ack", "client/src/session/engine/batch.rs",
       "                        !matches!(f, ClientFrame::Ack { .. } | ClientFrame::Send { .. })",
       "                        !matches!(f, ClientFrame::Send { .. })",
       "a read batch whose commit failed acknowledges none of its deliveries",
       test="a_read_batch_is_one_commit_and_is_acknowledged_only_once_committed", **ENGINE_UNIT),
 entry("batch-unsent", "client/src/session/engine/batch.rs",
       "                        !matches!(f, ClientFrame::Ack { .. } | ClientFrame::Send { .. })",
       "                        !matches!(f, ClientFrame::Ack { .. })",
       "a read batch whose commit failed sends none of the messages it released (their counter reservation is not durable)",
       test="messages_a_failed_batch_released_are_not_sent_and_the_next_starts_a_new_session", **ENGINE_UNIT),
 entry("batch-sending-state", "client/src/session/engine/batch.rs",
       "                self.outbound.clear();\n", "",
       "after a failed batch commit the sending state is read again, so the next message starts a new, announced session",
       test="messages_a_failed_batch_released_are_not_sent_and_the_next_starts_a_new_session", **ENGINE_UNIT),
 entry("batch-forget", "client/src/session/engine/batch.rs",
       "                self.inbound.clear();\n", "",
       "after a failed batch commit the receiving sessions are read again from disk, so what comes again opens again",
       test="a_read_batch_is_one_commit_and_is_acknowledged_only_once_committed", **ENGINE_UNIT),
 entry("store-read-error", "client/src/session/engine/inbound.rs",
       "            Entry::Vacant(entry) => entry.insert(self.store.inbound(sender, conversation)?),",
       "            Entry::Vacant(entry) => entry.insert(self.store.inbound(sender, conversation).unwrap_or_default()),",
       "a store read error is retried, never cached (and later saved) as empty sessions",
       test="a_store_read_failure_is_retried_and_never_overwrites_the_stored_sessions", **ENGINE_UNIT),
 entry("terminal-escape", "client/src/safe_text.rs", "pub fn needs_escape(c: char) -> bool {\n    matches!(c,",
       "pub fn needs_escape(c: char) -> bool {\n    false && matches!(c,",
       "peer and relay text reaches a terminal with its control and bidi characters escaped",
       "sotto-cli", ["--test", "terminal"], "hostile_texts_from_a_peer_cannot_take_over_the_terminal_live_or_replayed"),
 entry("terminal-continuation", "cli/src/text.rs",
       '    out.extend(lines.map(|line| format!("{CONTINUATION}{line}")));',
       "    out.extend(lines);",
       "a message's later lines are indented so that none looks like a message header",
       "sotto-cli", ["--test", "terminal"], "hostile_texts_from_a_peer_cannot_take_over_the_terminal_live_or_replayed"),
 entry("gui-escape", "app/src/chat/view.rs", "                    None => text(visible(&message.text))",
       "                    None => text(message.text.as_str())",
       "the app shows a message's text with its bidi and control characters escaped",
       "sotto-app", ["--test", "gui"], "bidi_controls_in_peer_text_are_escaped_and_notifications_carry_no_text",
       (), {"ICED_TEST_BACKEND": "tiny-skia"}),
 entry("preview-limits", "app/src/chat/files.rs", "    reader.limits(limits);", "    let _ = limits;",
       "the app decodes a peer's image for its preview only within limits of size and memory (a decompression bomb is refused)",
       "sotto-app", ["--lib"], "chat::files::tests::an_image_wider_than_the_decoder_takes_is_refused"),
 entry("lookalike-names", "client/src/contacts.rs", "                .take_while(|(s, _)| *s == skeleton)",
       "                .take_while(|_| false)",
       "a new contact whose name looks like a known one names the look-alikes",
       "sotto-client", ["--lib"], "a_new_name_that_looks_like_a_known_one_names_it"),
 entry("relay-storage-recovery", "server/src/store/mod.rs",
       "        if self.broken.load(Ordering::Acquire) {\n            self.recover(operation)?;",
       "        if false && self.broken.load(Ordering::Acquire) {\n            self.recover(operation)?;",
       "the relay reopens its database after a storage failure (a full disk, then space back) without a restart",
       "sotto-relay", ["--test", "storage"],
       "a_full_disk_refuses_what_it_cannot_keep_and_the_relay_recovers_without_a_restart"),
 entry("relay-storage-backoff", "server/src/store/mod.rs",
       "        if health.retry_at.is_some_and(|at| now < at) {", "        if false {",
       "a disk that stays full is reopened after a backoff, not at every operation",
       "sotto-relay", ["--test", "storage"], "a_disk_that_stays_full_is_not_reopened_at_every_message"),
 entry("relay-offline-members", "server/src/state/routing.rs",
       "            .filter(|(m, _)| *m != sender)",
       "            .filter(|(m, member)| *m != sender && member.peer.is_some())",
       "a room message is stored for the members who are offline too",
       "sotto-relay", ["--test", "offline"], "room_messages_wait_for_offline_members"),
 entry("relay-membership-lasts", "server/src/state/sessions.rs",
       "            .memberships\n            .get(user)",
       "            .memberships\n            .remove(user)",
       "a member stays a member of its rooms while offline",
       "sotto-relay", ["--lib"], "a_member_stays_a_member_while_offline_until_it_leaves"),
 entry("relay-undelivered", "server/src/commit/answer.rs",
       "            if !refused.is_empty() {\n                undelivered(peer, metrics, id, refused);",
       "            if false {\n                undelivered(peer, metrics, id, refused);",
       "the sender of a room message is told which members will not get it",
       "sotto-relay", ["--test", "offline"], "undelivered_names_the_members_at_their_bound"),
 entry("relay-answers-in-order", "server/src/connection/send.rs",
       "        if routing.sends.is_empty()\n            && routing.replies.is_empty()",
       "        if true\n            || routing.replies.is_empty()",
       "a request's answer waits for the answers to the sends before it",
       "sotto-relay", ["--test", "offline"], "requests_are_answered_in_order"),
 entry("client-shows-what-it-stored", "client/src/session/connection.rs",
       "        let shown = session.emit(&mut out).await;",
       "        let shown = written.is_err() || session.emit(&mut out).await;",
       "what a read batch stored is shown even if the connection broke before its acknowledgements left",
       "sotto-tests", ["--test", "faults"], "a_thousand_direct_messages_through_five_resets_arrive_once_in_order"),
 entry("receipt-marks-its-sender-only", "client/src/session/engine/delivery.rs",
       "                let for_it = record.recipients.iter().any(|(_, fp)| *fp == sender);",
       "                let for_it = true;",
       "a receipt marks delivered only its own sender, and only for a message sealed for it",
       "sotto-client", ["--lib"], "a_message_is_pending_then_sent_then_delivered_by_the_recipients_receipt",
       cargo=["--no-default-features"]),
 entry("receipt-after-commit", "client/src/session/engine/batch.rs",
       "        match batch.commit() {\n            Ok(()) => {",
       "        self.send_receipts(out);\n        match batch.commit() {\n            Ok(()) => {",
       "a receipt is sent only once what it names is durably stored",
       "sotto-client", ["--lib"], "stored_messages_are_receipted_to_their_sender_only_once_stored",
       cargo=["--no-default-features"]),
 entry("client-resends-unsent", "client/src/session/engine/delivery.rs",
       "    pub(super) fn resend_unsent(&mut self, which: impl Fn(&Chat) -> bool, out: &mut Out) {",
       "    pub(super) fn resend_unsent(&mut self, which: impl Fn(&Chat) -> bool, out: &mut Out) {\n        if true {\n            return;\n        }",
       "a message the relay did not confirm is sent again on the next connection, also after a restart",
       "sotto-tests", ["--test", "faults"], "a_sender_whose_connection_is_reset_loses_nothing"),
 entry("relay-resend-once", "server/src/store/inbox.rs",
       "                    if hashes.get(hash.as_slice()).map_err(db_err)?.is_some() {",
       "                    if false {",
       "a resend of bytes the relay still stores is stored no second time",
       "sotto-relay", ["--test", "offline"], "a_resend_of_what_is_stored_is_kept_once"),
 entry("client-outbox-durable", "client/src/session/engine/outbound.rs",
       "        if let Err(e) = self.store.push_outbox(id, chat, text) {",
       "        if let Err(e) = Ok::<(), StoreError>(()) {",
       "texts typed while disconnected are kept in the store and survive a restart",
       "sotto-client", ["--lib"], "typed_and_sealed_messages_survive_restarts_and_are_sent_once",
       cargo=["--no-default-features"]),
 entry("client-key-wait-durable", "client/src/session/engine/outbound.rs",
       "                let id = self.typed_id(&Chat::Direct(user.clone()), &text, out);",
       "                let id = self.sealing_typed.take().unwrap_or(u64::MAX);",
       "a direct message waiting for the peer's key is kept in the store's outbox and survives a restart",
       "sotto-client", ["--lib"], "a_direct_message_waiting_for_a_key_survives_a_restart_and_is_sealed_once",
       cargo=["--no-default-features"]),
 entry("client-lookup-again", "client/src/session/engine/mod.rs",
       "        for key in self.awaiting_key.keys() {",
       "        for key in self.awaiting_key.keys().take(0) {",
       "a key lookup lost with the connection is asked again on the next one",
       "sotto-client", ["--lib"], "a_key_lookup_lost_with_the_connection_is_asked_again",
       cargo=["--no-default-features"]),
 entry("client-outbox-once", "client/src/session/engine/mod.rs",
       "            if sealed.contains(&id) {",
       "            if id == u64::MAX && sealed.contains(&id) {",
       "a typed text sealed just before a crash is not sealed a second time",
       "sotto-client", ["--lib"], "typed_and_sealed_messages_survive_restarts_and_are_sent_once",
       cargo=["--no-default-features"]),
 entry("receipt-on-heartbeat", "client/src/session/engine/inbound.rs",
       "            self.receipt_again(&delivery.from, &key, index, conversation);",
       "",
       "a heartbeat is answered with a receipt again (one lost or refused is made good)",
       "sotto-client", ["--lib"], "stored_messages_are_receipted_to_their_sender_only_once_stored",
       cargo=["--no-default-features"]),
 entry("relay-sent-waits-for-store-or-ack", "server/src/commit/answer.rs",
       "            if staged.acked.len() == delivery.recipients.len() {",
       "            if true {",
       "a delivery handed over before it is stored is written unless its recipient acknowledged it: Sent never covers what is neither",
       "sotto-relay", ["--test", "live"], "a_delivery_not_acknowledged_in_time_is_stored_and_comes_again"),
 entry("relay-ack-by-its-recipient", "server/src/commit/staged.rs",
       "            .is_some_and(|to| to.name.has_key(user))",
       "            .is_some_and(|_| true)",
       "only a delivery's recipient can acknowledge its write away",
       "sotto-relay", ["--test", "live"], "only_its_recipient_can_acknowledge_a_delivery"),
 entry("relay-live-after-stored", "server/src/connection/pump.rs",
       "            if live.id <= after {\n                continue;",
       "            if false {\n                continue;",
       "a delivery sent from the database is not sent again from memory",
       "sotto-relay", ["--test", "live"], "deliveries_moving_between_memory_and_the_database_arrive_once_in_order"),
 entry("relay-fallback-before-live", "server/src/connection/pump.rs",
       "        if opened.falls_back {",
       "        if false {",
       "what is stored for a recipient comes before what is handed over after it",
       "sotto-relay", ["--test", "live"], "deliveries_moving_between_memory_and_the_database_arrive_once_in_order"),
 entry("relay-direct-counts-as-sent", "server/src/state/mod.rs",
       "                    if peer.try_push_delivery(frame).is_ok() {\n                        state.direct = id;",
       "                    if peer.try_push_delivery(frame).is_ok() {\n                        let _ = id;",
       "a delivery the committer queued on the connection itself is recorded, for the pump to count as sent",
       "sotto-relay", ["--lib"], "a_door_queues_on_the_connection_only_when_its_pump_is_idle"),
 entry("relay-sent-is-stored", "server/src/store/inbox.rs",
       "                        inbox\n                            .insert((key.as_str(), id), value.as_slice())\n                            .map_err(db_err)?;",
       "                        let _ = &value;",
       "nothing is answered Sent that was not stored for its recipients",
       "sotto-relay", ["--test", "offline"], "room_messages_wait_for_offline_members"),
 # Sessions v2 (issue 14): forward secrecy within a session, membership
 # changes, prekeys in use.
 entry("v2-chain-forgets", "crypto/src/session/receiving.rs", "        self.chain.forget(n)\n    }", "        let _ = n;\n        Ok(())\n    }", "a receiving session forgets a message's key once it is kept (a stolen state opens nothing before it)",
       "sotto-crypto", ["--lib"], "a_stolen_state_opens_nothing_read_before_it"),
 entry("v2-slot-needs-the-chain", "crypto/src/session/receiving.rs", "            *k ^= m;", "            let _ = (k, m);", "a slot seals the content key masked with the chain's key, so the pair key alone opens nothing",
       "sotto-crypto", ["--lib"], "a_stolen_state_opens_nothing_read_before_it",
       elsewhere=[("crypto/src/session/sending.rs", "            *s ^= m;", "            let _ = (s, m);")]),
 entry("v2-leave-no-slot", "client/src/session/engine/pairs.rs", "            session.remove_recipient(fp);", "            let _ = fp;", "a member who left gets no slot from the next message (no RSA, no new session)",
       "sotto-client", ["--no-default-features", "--lib"], "a_session_runs_on_and_only_a_newcomer_gets_an_announcement"),
 entry("v2-fallback-told", "client/src/session/engine/pairs.rs", "                    out.error(\n                        ProblemCode::NotForwardSecret,", "                    Out::default().error(\n                        ProblemCode::NotForwardSecret,", "a pair key wrapped to an identity key (no prekey) is never a silent downgrade",
       "sotto-client", ["--no-default-features", "--lib"], "no_prekey_falls_back_to_the_identity_key_with_a_notice_and_heals_once_one_appears"),
 entry("v2-fallback-heals", "client/src/session/engine/pairs.rs", "        let restart = must_restart || heals;", "        let restart = must_restart || (heals && false);", "a session restarts once a member it wrapped to an identity key has a prekey",
       "sotto-client", ["--no-default-features", "--lib"], "no_prekey_falls_back_to_the_identity_key_with_a_notice_and_heals_once_one_appears"),
 entry("v2-deleted-prekey-told", "client/src/session/engine/inbound.rs", "                    out.error(\n                        ProblemCode::KeyExpired,", "                    Out::default().error(\n                        ProblemCode::KeyExpired,", "a key wrapped to a deleted prekey is refused with its reason",
       "sotto-client", ["--no-default-features", "--lib"], "a_key_for_a_deleted_prekey_is_refused_with_its_reason"),
 entry("v2-duplicate-by-tag", "client/src/session/engine/inbound.rs", "            if seen && receiving.session.is_genuine(&conversation, body, &slot) {", "            if seen {", "only a message whose slot's tag verifies is taken for a duplicate; other failures are rejected",
       "sotto-client", ["--no-default-features", "--lib"], "a_genuine_duplicate_is_dropped_quietly_and_a_forged_one_rejected"),
 entry("v2-pair-reply", "client/src/session/engine/pairs.rs", "                self.reply_if_wanted(&delivery.from, sender, &answered, out);", "                let _ = (&answered, out.frames.len());", "a member answers a newcomer with a pair reply (no RSA, no signature of its own)",
       "sotto-client", ["--no-default-features", "--lib"], "a_newcomer_is_answered_with_a_pair_reply_for_one_decryption_and_no_signature"),
 entry("v2-announce-on-join", "client/src/session/engine/rooms.rs", "            self.announce_in_room(&room, out);", "", "a newcomer announces itself on joining, so members can answer before anyone writes",
       "sotto-client", ["--no-default-features", "--lib"], "a_newcomer_is_answered_with_a_pair_reply_for_one_decryption_and_no_signature"),

 # Disappearing messages (issue 14 item 4): what expires leaves the store.
 entry("expiry-compacts", "client/src/store/timers.rs",
       "        Ok(self.vault.compact()?)",
       "        Ok(true)",
       "after disappearing messages are deleted the store is compacted, so their sealed records leave the file",
       "sotto-client", ["--lib"], "a_sent_message_under_a_timer_leaves_the_store_file_when_it_expires",
       cargo=["--no-default-features"]),
 entry("expiry-deletes-unsent", "client/src/store/timers.rs",
       "                keys.push((UNSENT, key));",
       "                drop(key);",
       "an expired message's frames kept to send again are deleted with it",
       "sotto-client", ["--lib"], "a_sent_message_under_a_timer_leaves_the_store_file_when_it_expires",
       cargo=["--no-default-features"]),
 entry("expiry-outbox", "client/src/session/engine/outbound.rs",
       "        self.typed_expiring(id, chat, out);",
       "",
       "a text typed under a timer and still unsent when it expires leaves the outbox and is never sent",
       "sotto-client", ["--lib"], "a_queued_text_that_expires_before_it_is_sent_leaves_the_outbox",
       cargo=["--no-default-features"]),
 entry("expiry-of-received", "client/src/session/engine/inbound.rs",
       "            Content::TimedText { seconds, text } => (text, seconds),",
       "            Content::TimedText { seconds: _, text } => (text, 0),",
       "a received text disappears under the timer it was sent with, whatever the recipient's setting",
       "sotto-client", ["--lib"], "a_received_timed_text_expires_from_when_it_was_stored_even_with_no_timer_here",
       cargo=["--no-default-features"]),
 entry("timer-on-send", "client/src/session/engine/outbound.rs",
       "        let timer = self.timer_of(&Chat::Room(room.clone()));",
       "        let timer = 0;",
       "texts sent in a room under a timer carry it, so a member who missed the change still deletes them",
       "sotto-tests", ["--test", "disappearing"], "a_timer_one_member_sets_applies_at_the_others_even_one_who_missed_it"),
 entry("expiry-heartbeat", "client/src/session/engine/delivery.rs",
       "                Ok(None) => self.expired_unreceipted(&conversation, heartbeat.seq),",
       "                Ok(None) => false,",
       "a message that disappears before its receipts came still gets its heartbeats, so a withheld tail still shows",
       "sotto-client", ["--lib"], "a_message_that_disappears_unreceipted_still_gets_its_heartbeat",
       cargo=["--no-default-features"]),
 # Prekeys (crypto/src/prekey.rs, docs/protocol.md 12.6) and the relay's
 # prekey directory (server/src/connection/prekeys.rs, 9.11).
 entry("prekey-owner", PREKEY, "        if prekey.owner != owner.fingerprint() {", "        if false {",
       "a prekey names its owner, who must be the identity it is verified for",
       "sotto-crypto", ["--lib"], "prekeys_of_another_signer_or_owner_are_refused"),
 entry("prekey-signature", PREKEY, """        owner
            .verify(&transcript(&prekey), signature)
            .map_err(|_| ())?;""", """        let _ = owner.verify(&transcript(&prekey), signature);""",
       "a prekey is signed by its owner's identity key",
       "sotto-crypto", ["--lib"], "prekeys_of_another_signer_or_owner_are_refused"),
 entry("prekey-canonical", PREKEY, "wire::decode_canonical(rest)?;", "wire::decode_exact(rest)?;",
       "a prekey has one encoding (no over-long varints)",
       "sotto-crypto", ["--lib"], "only_the_one_canonical_encoding_is_accepted"),
 entry("prekey-key-rules", PREKEY, " || !acceptable_key(&key) ", " ",
       "a prekey is RSA-3072 with e = 65537",
       "sotto-crypto", ["--lib"], "keys_sotto_does_not_make_are_refused"),
 entry("prekey-not-identity-key", PREKEY, " || owner.uses_key(&key) {", " {",
       "a prekey is neither of its owner's identity keys",
       "sotto-crypto", ["--lib"], "keys_sotto_does_not_make_are_refused"),
 entry("prekey-lifetime", PREKEY, "            || lifetime > PREKEY_LIFETIME.as_secs()\n", "",
       "a prekey is valid for at most PREKEY_LIFETIME",
       "sotto-crypto", ["--lib"], "the_validity_window_is_enforced"),
 entry("prekey-expiry", PREKEY, "            || now >= prekey.expires_at\n", "",
       "an expired prekey is refused",
       "sotto-crypto", ["--lib"], "the_validity_window_is_enforced"),
 entry("s22", "client/src/session/prekeys.rs",
       "        if best.created_at() < theirs.seen {", "        if false {",
       "a client never takes an older prekey of a contact than one it took",
       "sotto-tests", ["--test", "hostile_relay"], "s22_a_substituted_or_replayed_prekey_is_refused_and_blamed_on_the_relay"),
 entry("client-prekey-forged-reported", "client/src/session/prekeys.rs",
       "                Err(_) => {\n                    self.refused.insert((name.clone(), Refusal::Forged));\n                }",
       "                Err(_) => {}",
       "a prekey that does not verify for the pinned identity is refused and blamed on the relay",
       "sotto-tests", ["--test", "hostile_relay"], "s22_a_substituted_or_replayed_prekey_is_refused_and_blamed_on_the_relay"),
 entry("prekey-future", PREKEY, "            || prekey.created_at > now.saturating_add(skew)\n", "",
       "a prekey from further in the future than MAX_CLOCK_SKEW is refused",
       "sotto-crypto", ["--lib"], "the_validity_window_is_enforced"),
 entry("v2-prekeys-deleted", "client/src/session/prekeys.rs", "now >= own.secret.delete_at(storage_age)", "now >= own.secret.delete_at(storage_age) && false", "a prekey's private half is deleted once its grace is over (record now, seize later opens nothing after it)",
       "sotto-client", ["--no-default-features", "--lib"], "record_now_seize_later_opens_nothing_once_the_grace_is_over"),
 # Files (protocol.md 13.10): a chunk opens only at its own index, and the
 # whole file only with its digest.
 entry("file-chunk-index", FILE, "        counter.copy_from_slice(&index.to_be_bytes());", "        counter.copy_from_slice(&0u32.to_be_bytes());",
       "a file chunk's nonce and associated data hold its index, so a chunk opens nowhere else",
       "sotto-crypto", ["--lib"], "file::tests::swapped_chunks_do_not_open",
       also=[("            &index.to_be_bytes(),\n            &self.count.to_be_bytes(),", "            &0u32.to_be_bytes(),\n            &self.count.to_be_bytes(),")]),
 entry("file-digest", FILE, "        if self.next != self.chunks.count || self.hasher.finalize() != self.digest {", "        if self.next != self.chunks.count {",
       "a file is accepted only if the whole plaintext has the manifest's digest",
       "sotto-crypto", ["--lib"], "file::tests::a_download_resumed_on_a_wrong_prefix_does_not_finish"),
 hostile("s23", FILE, "        counter.copy_from_slice(&index.to_be_bytes());", "        counter.copy_from_slice(&0u32.to_be_bytes());",
         "a relay's swapped, reordered, cut or replayed chunks fail the download (index in each chunk, the digest of the whole)",
         also=[("            &index.to_be_bytes(),\n            &self.count.to_be_bytes(),", "            &0u32.to_be_bytes(),\n            &self.count.to_be_bytes(),"),
               ("        if self.next != self.chunks.count || self.hasher.finalize() != self.digest {", "        if self.next != self.chunks.count {")]),
 hostile("s24", "client/src/session/engine/files.rs", "            download.retry_at = Some(Instant::now() + RETRY_AFTER);\n            self.files.stale.entry(blob).or_default().extend(coming);",
         "            download.retry_at = Some(Instant::now() + RETRY_AFTER);\n            let _ = coming;",
         "after a chunk the relay failed, the answers still coming for the chunks asked after it are dropped, not taken for the chunks asked again"),
 entry("v2-sessions-pruned", "client/src/store.rs", "                .filter(|s| s.context.is_current(now))", "                .filter(|s| s.context.is_current(now) || true)", "receiving sessions past their age are deleted from the store (their chains would open what was never received)",
       "sotto-client", ["--no-default-features", "--lib"], "record_now_seize_later_opens_nothing_once_the_grace_is_over"),

]


def run(e):
    """Applies `e`'s patches, runs its test, restores the files; the outcome."""
    originals = {}
    patched = {}
    for path, replacements in patches_by_file(e).items():
        full = f"{ROOT}/{path}"
        originals[full] = open(full).read()
        text = originals[full]
        for old, new in replacements:
            if text.count(old) != 1:
                return "PATCH-NOT-FOUND", ""
            text = text.replace(old, new)
        patched[full] = text
    try:
        for full, text in patched.items():
            open(full, "w").write(text)
        command = (["timeout", "900", "cargo", "test", "-q", "-p", e["package"]]
                   + e["cargo"] + e["target"] + ["--", e["test"]])
        r = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                           env={**os.environ, **e["env"]})
    finally:
        for full, text in originals.items():
            open(full, "w").write(text)
    out = r.stdout + r.stderr
    if "error[" in out or "could not compile" in out:
        return "COMPILE-ERROR", out
    if "test result: FAILED" in out:
        return "FAILED (as it must)", out
    if re.search(r"test result: ok\. [1-9]", out):
        return "PASSED (defence not covered!)", out
    if "test result: ok" in out:
        return "NO-TEST-RAN", out
    return f"rc={r.returncode}", out


def main():
    only = sys.argv[1:]
    names = [e["name"] for e in ENTRIES]
    unknown = [n for n in only if n not in names]
    if unknown:
        sys.exit(f"unknown entries: {' '.join(unknown)} (known: {' '.join(names)})")
    results = []
    for e in ENTRIES:
        if only and e["name"] not in only:
            continue
        status, out = run(e)
        if status != "FAILED (as it must)":
            print(out[-4000:], flush=True)
        else:  # how it failed: the first panic and what it said
            lines = out.splitlines()
            at = next((i for i, l in enumerate(lines) if "panicked at" in l), None)
            if at is not None:
                print("\n".join(lines[at:at + 4])[:1000], flush=True)
        results.append((e["name"], e["what"], status))
        print(e["name"], status, flush=True)
    print(json.dumps(results, indent=1))
    sys.exit(0 if all(r[2] == "FAILED (as it must)" for r in results) else 1)


if __name__ == "__main__":
    main()
