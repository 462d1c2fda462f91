//! A walk through sotto's cryptography, end to end, on one machine:
//! two identities, a passphrase-protected identity file, a safety number,
//! a signed prekey, a session announced to it, and one message sealed,
//! opened, forgotten and tampered with.
//!
//! `cargo run --release -p sotto-crypto --example walkthrough`

// An example that explains itself, with one recipient by construction.
#![allow(clippy::print_stdout, clippy::indexing_slicing)]

use std::error::Error;
use std::time::Instant;

use sotto_crypto::{
    Conversation, Identity, KdfParams, NoPersistence, PeerBody, ReplayWindow, SendingSession,
    SequenceCounter, SignedPrekey, WrapTo, roster_digest, sign_announcements,
};

fn main() -> Result<(), Box<dyn Error>> {
    let mut rng = rand::rng();

    let started = Instant::now();
    let alice = Identity::generate()?;
    let bob = Identity::generate()?;
    println!(
        "generated two identities (2 x two RSA-3072 keys) in {:.1?}",
        started.elapsed()
    );
    println!("alice  {}", alice.fingerprint());
    println!("bob    {}", bob.fingerprint());

    let dir = std::env::temp_dir().join(format!("sotto-walkthrough-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("alice.sotto-id");
    let started = Instant::now();
    alice.save(&mut rng, &path, b"alice's passphrase", KdfParams::DEFAULT)?;
    let reloaded = Identity::load(&path, b"alice's passphrase")?;
    println!(
        "\nsaved and reloaded alice's identity file (argon2id 64 MiB, 3 passes) in {:.1?}: same key: {}",
        started.elapsed(),
        reloaded.fingerprint() == alice.fingerprint()
    );
    match Identity::load(&path, b"a guess") {
        Err(e) => println!("a wrong passphrase gives: {e}"),
        Ok(_) => println!("a wrong passphrase opened the file: this is a bug"),
    }
    std::fs::remove_dir_all(&dir)?;

    let number = alice.public().safety_number(bob.public());
    println!("\nthe safety number alice and bob read to each other:\n{number}");
    println!("QR payload: {}", number.qr_payload());

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let started = Instant::now();
    let (signed_prekey, prekey_secret) = bob.make_prekey(&mut rng, now)?;
    println!(
        "\nbob made and signed a prekey (an RSA-3072 key of its own) in {:.1?}",
        started.elapsed()
    );

    let room = Conversation::room("lobby");
    let started = Instant::now();
    let prekey = SignedPrekey::verify(signed_prekey.as_bytes(), bob.public(), now)?;
    let mut counter = SequenceCounter::resume(0, NoPersistence);
    let mut session = SendingSession::start(&mut rng, alice.fingerprint(), room.clone(), 1, 0, now);
    let unsigned = session.add_recipients(&mut rng, &[WrapTo::Prekey(&prekey)], counter.peek())?;
    let announcements = sign_announcements(&alice, &mut rng, unsigned)?;
    let mut from_alice =
        announcements[0].accept(&mut rng, &bob, alice.public(), now, Some(&prekey_secret))?;
    println!(
        "alice wrapped a pair key and chain key to bob's prekey and signed it; bob verified and unwrapped it: {:.1?}",
        started.elapsed()
    );

    let sealed = session.seal(&mut rng, &mut counter, 0, b"hello, bob")?;
    println!(
        "sealed 10 bytes: {}-byte body for everyone, {}-byte slot for bob",
        sealed.body.len(),
        sealed.slots[0].to_bytes().len()
    );

    let slot = sealed.slots[0].to_bytes();
    let PeerBody::Message(body) = PeerBody::decode(&sealed.body)? else {
        return Err("not a message".into());
    };
    let opened = from_alice.open(&room, &body, &slot)?;
    let mut window = ReplayWindow::starting_at(0);
    let expected_roster = roster_digest([alice.fingerprint(), bob.fingerprint()]);
    println!(
        "the message commits to its readers, alice and bob: {}",
        opened.roster == expected_roster
    );
    println!(
        "bob opened seq {}: {:?} ({:?})",
        opened.seq,
        String::from_utf8_lossy(&opened.plaintext),
        window.accept(opened.seq)?
    );
    from_alice.forget(opened.seq)?;
    match window.accept(opened.seq) {
        Err(e) => println!("the same message again: {e}"),
        Ok(_) => println!("a replay was accepted: this is a bug"),
    }
    match from_alice.open(&room, &body, &slot) {
        Err(e) => println!("its key is forgotten, so even bob's session cannot open it again: {e}"),
        Ok(_) => println!("a forgotten message opened again: this is a bug"),
    }

    let mut tampered = sealed.body.clone();
    if let Some(last) = tampered.last_mut() {
        *last ^= 1;
    }
    let result = PeerBody::decode(&tampered).and_then(|b| match b {
        PeerBody::Message(body) => from_alice.open(&room, &body, &slot).map(|_| ()),
        PeerBody::Announcement(_) | PeerBody::PairReply(_) => Ok(()),
    });
    println!(
        "one flipped bit: {}",
        result
            .err()
            .map_or("opened (a bug)".to_string(), |e| e.to_string())
    );
    Ok(())
}
