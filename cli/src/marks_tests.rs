//! Unit tests of the delivery marks and notices of interactive mode
//! ([`crate::marks`]), through [`View::show`] as the terminal prints them.

use std::time::Instant;

use sotto_client::session::{
    Chat, Command, Connection, Delivery, DeliveryState, Message, Problem, ProblemCode, TrustLevel,
    Update,
};
use sotto_crypto::Fingerprint;

use super::tests::{connected, shown};
use super::{CONTINUATION, HISTORY_SHOWN, View};

fn mine(chat: &str, seq: u64, text: &str, delivery: Delivery) -> Message {
    let chat = match chat.strip_prefix('@') {
        Some(peer) => Chat::Direct(peer.parse().unwrap()),
        None => Chat::Room(chat.trim_start_matches('#').parse().unwrap()),
    };
    Message {
        chat,
        from: "alice".parse().unwrap(),
        fingerprint: Fingerprint([7; 32]),
        trust: TrustLevel::Verified,
        outgoing: true,
        seq,
        sent_at_ms: 25_199_000,
        received_at_ms: 25_199_000,
        late: false,
        position: (seq, 0),
        text: text.to_owned(),
        delivery: Some(delivery),
        expires_at_ms: None,
        file: None,
    }
}

fn delivery(state: DeliveryState, to: &[&str], got: &[&str], refused: &[&str]) -> Delivery {
    let names = |list: &[&str]| list.iter().map(|n| n.parse().unwrap()).collect();
    Delivery {
        state,
        recipients: names(to),
        delivered: names(got),
        refused: names(refused),
    }
}

fn changed(message: &Message, delivery: Delivery) -> Update {
    Update::Delivery {
        chat: message.chat.clone(),
        id: message.id(),
        delivery,
    }
}

#[test]
fn your_messages_in_the_history_end_with_how_far_they_got() {
    use DeliveryState::*;
    let mut view = View::new("relay.example:7447", None, HISTORY_SHOWN);
    let messages = vec![
        mine("#lobby", 0, "a", delivery(Pending, &["bob"], &[], &[])),
        mine("#lobby", 1, "b", delivery(Sent, &["bob"], &[], &[])),
        mine("#lobby", 2, "c", delivery(Sent, &["bob"], &["bob"], &[])),
        mine(
            "#lobby",
            3,
            "d",
            delivery(Sent, &["bob", "carol"], &["bob"], &[]),
        ),
        mine(
            "#lobby",
            4,
            "e\nf",
            delivery(
                Failed(Box::new(Problem::new(
                    ProblemCode::Relay(sotto_proto::ErrorCode::QueueFull),
                    "full (QueueFull)",
                ))),
                &["bob"],
                &[],
                &[],
            ),
        ),
    ];
    let out = shown(
        &mut view,
        &Update::History {
            chat: Chat::Room("lobby".parse().unwrap()),
            messages,
        },
    );
    assert_eq!(
        out,
        [
            "[06:59:59] #lobby <alice> a (pending)".to_owned(),
            "[06:59:59] #lobby <alice> b (sent)".to_owned(),
            "[06:59:59] #lobby <alice> c (delivered)".to_owned(),
            "[06:59:59] #lobby <alice> d (delivered to 1 of 2)".to_owned(),
            "[06:59:59] #lobby <alice> e".to_owned(),
            format!("{CONTINUATION}f (not sent: full (QueueFull))"),
        ]
    );
    // A message from the history is tracked: its delivery is said.
    let pending = mine("#lobby", 0, "a", delivery(Pending, &["bob"], &[], &[]));
    let out = shown(
        &mut view,
        &changed(&pending, delivery(Sent, &["bob"], &["bob"], &[])),
    );
    assert_eq!(
        out,
        ["* #lobby: delivered to bob: your message of 06:59:59 \"a\""]
    );
}

#[test]
fn a_direct_message_says_delivered_once_and_sent_says_nothing() {
    use DeliveryState::*;
    let mut view = connected();
    let message = mine(
        "@bob",
        0,
        "see you at the station at nine, platform 4",
        delivery(Pending, &["bob"], &[], &[]),
    );
    // Being sent over a live connection: no mark.
    let out = shown(&mut view, &Update::Message(message.clone()));
    assert_eq!(
        out,
        ["[06:59:59] -> @bob <alice> see you at the station at nine, platform 4"]
    );
    let sent = delivery(Sent, &["bob"], &[], &[]);
    assert!(shown(&mut view, &changed(&message, sent)).is_empty());
    assert_eq!(view.due(), None);
    let got = delivery(Sent, &["bob"], &["bob"], &[]);
    assert_eq!(
        shown(&mut view, &changed(&message, got.clone())),
        ["* @bob: delivered: your message of 06:59:59 \"see you at the station a…\""]
    );
    // The same state again (a receipt that came twice): nothing.
    assert!(shown(&mut view, &changed(&message, got)).is_empty());
    // A message not shown in this run: nothing.
    let other = mine("@bob", 9, "x", delivery(Sent, &["bob"], &["bob"], &[]));
    assert!(shown(&mut view, &changed(&other, other.delivery.clone().unwrap())).is_empty());
}

#[test]
fn a_failure_and_members_the_relay_will_not_keep_it_for_are_said_once() {
    use DeliveryState::*;
    let mut view = connected();
    let message = mine("@bob", 0, "hello", delivery(Pending, &["bob"], &[], &[]));
    shown(&mut view, &Update::Message(message.clone()));
    let failed = delivery(
        Failed(Box::new(Problem::new(
            ProblemCode::Relay(sotto_proto::ErrorCode::QueueFull),
            "full\u{1b}[2J (QueueFull)",
        ))),
        &["bob"],
        &[],
        &[],
    );
    assert_eq!(
        shown(&mut view, &changed(&message, failed.clone())),
        [r#"! @bob: not sent: your message of 06:59:59 "hello": full\e[2J (QueueFull)"#]
    );
    assert!(shown(&mut view, &changed(&message, failed)).is_empty());

    let room = mine(
        "#lobby",
        0,
        "hi all",
        delivery(Pending, &["bob", "carol", "dave"], &[], &[]),
    );
    shown(&mut view, &Update::Message(room.clone()));
    let refused = delivery(Pending, &["bob", "carol", "dave"], &[], &["carol", "dave"]);
    assert_eq!(
        shown(&mut view, &changed(&room, refused.clone())),
        [
            "! #lobby: carol and dave will not get your message of 06:59:59 \"hi all\": the relay would not keep it for them"
        ]
    );
    assert!(shown(&mut view, &changed(&room, refused)).is_empty());
    // bob's receipt: everyone who can get it... but not everyone it was
    // sealed for: "delivered to 1 of 3" after the coalescing delay.
    let got = delivery(
        Sent,
        &["bob", "carol", "dave"],
        &["bob"],
        &["carol", "dave"],
    );
    assert!(shown(&mut view, &changed(&room, got)).is_empty());
    let mut out = Vec::new();
    view.tick(Instant::now() + crate::marks::COALESCE, &mut out);
    assert_eq!(
        out,
        ["* #lobby: delivered to 1 of 3 (bob): your message of 06:59:59 \"hi all\""]
    );
}

#[test]
fn a_big_room_gets_one_line_per_message_however_many_receipts() {
    use DeliveryState::*;
    let mut view = connected();
    let members: Vec<String> = (0..10).map(|n| format!("m{n}")).collect();
    let to: Vec<&str> = members.iter().map(String::as_str).collect();
    let first = mine("#lobby", 0, "one", delivery(Pending, &to, &[], &[]));
    let second = mine("#lobby", 1, "two", delivery(Pending, &to, &[], &[]));
    shown(&mut view, &Update::Message(first.clone()));
    shown(&mut view, &Update::Message(second.clone()));
    let start = Instant::now();
    // The second reaches everyone quickly: one line, no "N of M".
    for n in 1..=10 {
        let out = shown(
            &mut view,
            &changed(&second, delivery(Sent, &to, &to[..n], &[])),
        );
        if n < 10 {
            assert!(out.is_empty(), "{out:?}");
        } else {
            assert_eq!(
                out,
                ["* #lobby: delivered to all 10: your message of 06:59:59 \"two\""]
            );
        }
    }
    // The first reaches three, then nothing for a while: one line once
    // the delay has passed, however many receipts came before.
    for n in 1..=3 {
        let out = shown(
            &mut view,
            &changed(&first, delivery(Sent, &to, &to[..n], &[])),
        );
        assert!(out.is_empty(), "{out:?}");
    }
    let due = view.due().expect("a partial delivery is due");
    let mut out = Vec::new();
    view.tick(start, &mut out);
    assert!(out.is_empty(), "{out:?}");
    view.tick(due, &mut out);
    assert_eq!(
        out,
        ["* #lobby: delivered to 3 of 10 (m0, m1 and m2): your message of 06:59:59 \"one\""]
    );
    assert_eq!(view.due(), None);
    // More receipts: nothing until everyone has it, then one line.
    out.clear();
    for n in 4..=10 {
        out.extend(shown(
            &mut view,
            &changed(&first, delivery(Sent, &to, &to[..n], &[])),
        ));
    }
    view.tick(due + crate::marks::COALESCE, &mut out);
    assert_eq!(
        out,
        ["* #lobby: delivered to all 10: your message of 06:59:59 \"one\""]
    );
}

#[test]
fn a_room_of_few_names_who_has_it_and_who_not_yet() {
    use DeliveryState::*;
    let mut view = connected();
    let to = ["bob", "carol", "dave"];
    let message = mine("#lobby", 0, "hi", delivery(Pending, &to, &[], &[]));
    shown(&mut view, &Update::Message(message.clone()));
    shown(
        &mut view,
        &changed(&message, delivery(Sent, &to, &["carol"], &[])),
    );
    let mut out = Vec::new();
    view.tick(view.due().unwrap(), &mut out);
    assert_eq!(
        out,
        [
            "* #lobby: delivered to 1 of 3 (carol; not yet bob and dave): your message of 06:59:59 \"hi\""
        ]
    );
    let out = shown(&mut view, &changed(&message, delivery(Sent, &to, &to, &[])));
    assert_eq!(
        out,
        ["* #lobby: delivered to all 3 (bob, carol and dave): your message of 06:59:59 \"hi\""]
    );
}

/// `text` typed while the connection is lost, then the session back and
/// reporting it sealed: the line printed when typed (pending) and the
/// message as the session reports it.
fn typed_offline_then_sealed(view: &mut View, text: &str) -> (String, Message) {
    shown(
        view,
        &Update::Connection(Connection::Reconnecting {
            after: std::time::Duration::from_secs(1),
            reason: "gone".into(),
        }),
    );
    let mut out = Vec::new();
    let command = view.command(text, &mut out).unwrap();
    assert!(matches!(command, Some(Command::Send { .. })));
    assert_eq!(out.len(), 1, "{out:?}");
    shown(
        view,
        &Update::Connection(Connection::Connected {
            name: "alice".parse().unwrap(),
        }),
    );
    let message = mine(
        "#lobby",
        0,
        text,
        delivery(DeliveryState::Pending, &["bob"], &[], &[]),
    );
    // Not printed again.
    assert!(shown(view, &Update::Message(message.clone())).is_empty());
    (out.remove(0), message)
}

#[test]
fn a_line_typed_offline_shows_pending_at_once_then_accepted_then_delivered() {
    use DeliveryState::*;
    let mut view = connected();
    let (line, message) = typed_offline_then_sealed(&mut view, "typed offline");
    assert!(
        line.starts_with('[') && line.ends_with("] #lobby <alice> typed offline (pending)"),
        "{line:?}"
    );
    let shown_at = line[..10].to_owned();
    // Accepted: said once the delay has passed (gathered per room).
    assert!(
        shown(
            &mut view,
            &changed(&message, delivery(Sent, &["bob"], &[], &[]))
        )
        .is_empty()
    );
    let mut out = Vec::new();
    view.tick(view.due().unwrap(), &mut out);
    assert_eq!(
        out,
        [format!(
            "* #lobby: accepted by the relay: your message of {} \"typed offline\"",
            &shown_at[1..9]
        )]
    );
    let out = shown(
        &mut view,
        &changed(&message, delivery(Sent, &["bob"], &["bob"], &[])),
    );
    assert_eq!(
        out,
        [format!(
            "* #lobby: delivered to bob: your message of {} \"typed offline\"",
            &shown_at[1..9]
        )]
    );
}

/// A recipient's receipt can come before the relay's `Sent` (the relay
/// hands a message over before it stores it): "delivered" is said, and no
/// "accepted by the relay" after it.
#[test]
fn a_receipt_before_the_relays_sent_says_delivered_only() {
    use DeliveryState::*;
    let mut view = connected();
    let (_, message) = typed_offline_then_sealed(&mut view, "typed offline");
    let out = shown(
        &mut view,
        &changed(&message, delivery(Pending, &["bob"], &["bob"], &[])),
    );
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(
        out[0].starts_with("* #lobby: delivered to bob: "),
        "{out:?}"
    );
    let out = shown(
        &mut view,
        &changed(&message, delivery(Sent, &["bob"], &["bob"], &[])),
    );
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(view.due(), None);
}

#[test]
fn messages_in_flight_when_the_connection_is_lost_are_said_pending_once() {
    use DeliveryState::*;
    let mut view = connected();
    let a = mine("#lobby", 0, "first", delivery(Pending, &["bob"], &[], &[]));
    let b = mine("#lobby", 1, "second", delivery(Pending, &["bob"], &[], &[]));
    let c = mine("#lobby", 2, "third", delivery(Pending, &["bob"], &[], &[]));
    for message in [&a, &b, &c] {
        shown(&mut view, &Update::Message(message.clone()));
    }
    shown(&mut view, &changed(&a, delivery(Sent, &["bob"], &[], &[])));
    let lost = Update::Connection(Connection::Reconnecting {
        after: std::time::Duration::from_secs(1),
        reason: "gone".into(),
    });
    let out = shown(&mut view, &lost);
    assert_eq!(
        &out[1..],
        [
            "! #lobby: not yet accepted by the relay, kept and sent again once connected: 2 messages, 06:59:59 \"second\" to 06:59:59 \"third\""
        ]
    );
    // Lost again before they went: not said again.
    assert_eq!(shown(&mut view, &lost).len(), 1);
    // Accepted (b delivered at once, c only accepted): one line for c.
    shown(&mut view, &changed(&b, delivery(Sent, &["bob"], &[], &[])));
    shown(&mut view, &changed(&c, delivery(Sent, &["bob"], &[], &[])));
    let out = shown(
        &mut view,
        &changed(&b, delivery(Sent, &["bob"], &["bob"], &[])),
    );
    assert_eq!(out.len(), 1, "{out:?}");
    let mut out = Vec::new();
    view.tick(view.due().unwrap(), &mut out);
    assert_eq!(
        out,
        ["* #lobby: accepted by the relay: your message of 06:59:59 \"third\""]
    );
}

#[test]
fn the_first_words_naming_a_message_are_made_safe() {
    use DeliveryState::*;
    let mut view = connected();
    let message = mine(
        "@bob",
        0,
        "\u{1b}]0;x\u{7}\n[06:59:59] #lobby <bob> hi",
        delivery(Pending, &["bob"], &[], &[]),
    );
    shown(&mut view, &Update::Message(message.clone()));
    let out = shown(
        &mut view,
        &changed(&message, delivery(Sent, &["bob"], &["bob"], &[])),
    );
    assert_eq!(
        out,
        [r#"* @bob: delivered: your message of 06:59:59 "\e]0;x\x07…""#]
    );
}

#[test]
fn a_direct_message_to_nobody_shows_pending_then_not_sent_with_the_reason() {
    let mut view = connected();
    let mut out = Vec::new();
    // No key known for carol: printed at once, pending.
    view.command("/msg carol hello?", &mut out).unwrap();
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(
        out[0].ends_with("] -> @carol <alice> hello? (pending)"),
        "{out:?}"
    );
    let at = out[0][1..9].to_owned();
    // The relay knows no carol: the problem names the line it left unsent.
    let carol = Chat::Direct("carol".parse().unwrap());
    let problem = |text: &str| {
        Update::Error(Problem::new(ProblemCode::NoSuchUser, text).unsent(carol.clone(), 1))
    };
    let out = shown(
        &mut view,
        &problem("there is no user called carol on this relay"),
    );
    assert_eq!(
        out,
        [format!(
            "! @carol: not sent: your message of {at} \"hello?\": there is no user called carol on this relay"
        )]
    );
    // A problem about nothing printed when typed is said as it is.
    let out = shown(
        &mut view,
        &problem("there is no user called carol on this relay"),
    );
    assert_eq!(out, ["! there is no user called carol on this relay"]);
}

#[test]
fn texts_queued_by_an_earlier_run_show_pending_at_start_and_once() {
    use DeliveryState::*;
    let mut view =
        View::new("relay.example:7447", None, HISTORY_SHOWN).named("alice".parse().unwrap());
    let carol = Chat::Direct("carol".parse().unwrap());
    let out = shown(
        &mut view,
        &Update::Queued(vec![sotto_client::session::Queued {
            chat: carol.clone(),
            typed_at_ms: 25_199_000,
            text: "hi carol".into(),
        }]),
    );
    assert_eq!(out, ["[06:59:59] -> @carol <alice> hi carol (pending)"]);
    shown(
        &mut view,
        &Update::Connection(Connection::Connected {
            name: "alice".parse().unwrap(),
        }),
    );
    let message = mine(
        "@carol",
        0,
        "hi carol",
        delivery(Pending, &["carol"], &[], &[]),
    );
    assert!(shown(&mut view, &Update::Message(message.clone())).is_empty());
    let out = shown(
        &mut view,
        &changed(&message, delivery(Sent, &["carol"], &["carol"], &[])),
    );
    assert_eq!(
        out,
        ["* @carol: delivered: your message of 06:59:59 \"hi carol\""]
    );
}
