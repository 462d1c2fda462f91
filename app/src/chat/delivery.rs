//! How far a message of yours got, as the timeline shows it beside its
//! time: `◷` pending (the relay has not accepted it yet), `✓` sent (the
//! relay's word), `✓✓` delivered to everyone it was encrypted for (their
//! own receipts), `✓✓ N/M` delivered to N of M, `✗` not sent. Who has it,
//! who does not yet and who will not get it are the details shown on
//! hover and on a click of the mark; a failure and the members the relay
//! will not keep it for are also said under the message, always.

use iced::widget::{button, column, text, tooltip};
use iced::{Element, Padding};
use sotto_client::safe_text::multiline as visible;
use sotto_client::session::{Delivery, DeliveryState};
use sotto_client::ui::words::{self, NOT_KEPT};
use sotto_proto::UserName;

/// The mark of a message not yet accepted by the relay.
pub(super) const PENDING: &str = "◷";
/// The mark of a message the relay accepted (stored for its recipients).
pub(super) const SENT: &str = "✓";
/// The mark of a message delivered (to all, or with `N/M` to some).
pub(super) const DELIVERED: &str = "✓✓";
/// The mark of a message that was not sent.
pub(super) const FAILED: &str = "✗";

/// How a mark is coloured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Look {
    /// Grey: on its way.
    Quiet,
    /// Green: delivered to everyone.
    Done,
    /// Red: not sent.
    Danger,
}

/// The mark beside the time, and its colour.
pub(super) fn mark(delivery: &Delivery) -> (String, Look) {
    if matches!(delivery.state, DeliveryState::Failed(_)) {
        return (FAILED.to_owned(), Look::Danger);
    }
    let reached = words::reached(delivery);
    let (got, of) = (reached.got.len(), reached.of());
    if got > 0 {
        if got >= of {
            return (DELIVERED.to_owned(), Look::Done);
        }
        return (format!("{DELIVERED} {got}/{of}"), Look::Quiet);
    }
    match delivery.state {
        DeliveryState::Pending => (PENDING.to_owned(), Look::Quiet),
        _ => (SENT.to_owned(), Look::Quiet),
    }
}

fn list(names: &[&UserName]) -> String {
    names
        .iter()
        .map(|n| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The details, on one line: where it is, then who has it, who does not
/// yet and who will not get it.
pub(super) fn details(delivery: &Delivery) -> String {
    let words::Reached {
        got,
        waiting,
        refused,
    } = words::reached(delivery);
    let mut parts = Vec::new();
    match &delivery.state {
        // A recipient has it already: the relay passes a message on before
        // it answers for it (protocol.md 9.7), and "not yet accepted"
        // beside "delivered" would only puzzle.
        DeliveryState::Pending if !got.is_empty() => {}
        DeliveryState::Pending => parts.push("Not yet accepted by the relay".to_owned()),
        DeliveryState::Sent => parts.push("Accepted by the relay".to_owned()),
        DeliveryState::Failed(why) => parts.push(format!("Not sent: {}", visible(&why.message))),
    }
    if delivery.recipients.is_empty() {
        parts.push("encrypted for nobody else".to_owned());
        return parts.join(" · ");
    }
    if !got.is_empty() {
        let lead = if parts.is_empty() {
            "Delivered"
        } else {
            "delivered"
        };
        parts.push(format!("{lead} to {}", list(&got)));
    }
    if !waiting.is_empty() && !matches!(delivery.state, DeliveryState::Failed(_)) {
        parts.push(format!("not yet delivered to {}", list(&waiting)));
    }
    if !refused.is_empty() {
        parts.push(format!("will not get it: {}", list(&refused)));
    }
    parts.join(" · ")
}

/// What is said under the message whatever the user does: why it was not
/// sent, and who the relay will not keep it for.
pub(super) fn warnings(delivery: &Delivery) -> Vec<(String, Look)> {
    let mut lines = Vec::new();
    if let DeliveryState::Failed(why) = &delivery.state {
        lines.push((format!("not sent: {}", visible(&why.message)), Look::Danger));
    }
    let refused = words::reached(delivery).refused;
    if !refused.is_empty() && !matches!(delivery.state, DeliveryState::Failed(_)) {
        lines.push((
            format!("{} will not get it: {NOT_KEPT}", list(&refused)),
            Look::Danger,
        ));
    }
    lines
}

/// The text style of `look`.
pub(super) fn style(look: Look) -> fn(&iced::Theme) -> text::Style {
    match look {
        Look::Quiet => text::secondary,
        Look::Done => text::success,
        Look::Danger => text::danger,
    }
}

/// The mark as a small flat button (a click shows or hides the details
/// under the message), with the details as its tooltip.
pub(super) fn mark_button<'a, M: Clone + 'a>(
    label: String,
    look: Look,
    hint: String,
    on_press: M,
) -> Element<'a, M> {
    let mark = button(text(label).size(11).style(style(look)))
        .style(button::text)
        .padding(Padding::ZERO)
        .on_press(on_press);
    tooltip(
        mark,
        iced::widget::container(column![text(hint).size(12)])
            .padding(6)
            .style(iced::widget::container::rounded_box),
        tooltip::Position::Right,
    )
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The relay refused a message: its queue is full.
    fn queue_full(why: &str) -> Box<sotto_client::session::Problem> {
        Box::new(sotto_client::session::Problem::new(
            sotto_client::session::ProblemCode::Relay(sotto_proto::ErrorCode::QueueFull),
            why,
        ))
    }

    fn names(list: &[&str]) -> Vec<UserName> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn delivery(state: DeliveryState, to: &[&str], got: &[&str], refused: &[&str]) -> Delivery {
        Delivery {
            state,
            recipients: names(to),
            delivered: names(got),
            refused: names(refused),
        }
    }

    #[test]
    fn marks_say_how_far_it_got() {
        use DeliveryState::*;
        let cases = [
            (delivery(Pending, &["bob"], &[], &[]), "◷", Look::Quiet),
            (delivery(Sent, &["bob"], &[], &[]), "✓", Look::Quiet),
            (delivery(Sent, &[], &[], &[]), "✓", Look::Quiet),
            (delivery(Sent, &["bob"], &["bob"], &[]), "✓✓", Look::Done),
            (
                delivery(Sent, &["bob", "carol"], &["BOB"], &[]),
                "✓✓ 1/2",
                Look::Quiet,
            ),
            // A receipt can come before the relay's `Sent`.
            (delivery(Pending, &["bob"], &["bob"], &[]), "✓✓", Look::Done),
            (
                delivery(Failed(queue_full("full (QueueFull)")), &["bob"], &[], &[]),
                "✗",
                Look::Danger,
            ),
            // A receipt only counts from a recipient.
            (
                delivery(Sent, &["bob"], &["mallory"], &[]),
                "✓",
                Look::Quiet,
            ),
        ];
        for (delivery, label, look) in cases {
            assert_eq!(mark(&delivery), (label.to_owned(), look), "{delivery:?}");
        }
    }

    #[test]
    fn details_name_who_has_it_who_does_not_yet_and_who_will_not_get_it() {
        use DeliveryState::*;
        let d = delivery(Sent, &["bob", "carol", "dave"], &["bob"], &["dave"]);
        assert_eq!(
            details(&d),
            "Accepted by the relay · delivered to bob · not yet delivered to carol · will not get it: dave"
        );
        assert_eq!(
            warnings(&d),
            [(
                "dave will not get it: the relay would not keep it for them".to_owned(),
                Look::Danger
            )]
        );
        let d = delivery(Pending, &["bob"], &[], &[]);
        assert_eq!(
            details(&d),
            "Not yet accepted by the relay · not yet delivered to bob"
        );
        assert!(warnings(&d).is_empty());
        // A receipt before the relay's `Sent` (it passes a message on
        // first): who has it, and no "not yet accepted".
        let d = delivery(Pending, &["bob", "carol"], &["bob"], &[]);
        assert_eq!(details(&d), "Delivered to bob · not yet delivered to carol");
        let d = delivery(Sent, &[], &[], &[]);
        assert_eq!(
            details(&d),
            "Accepted by the relay · encrypted for nobody else"
        );
        // A failure: the reason, under the message too (bidi controls in
        // the relay's words escaped).
        let d = delivery(
            Failed(queue_full("full\u{202e} (QueueFull)")),
            &["bob"],
            &[],
            &[],
        );
        let (line, look) = &warnings(&d)[0];
        assert_eq!(*look, Look::Danger);
        assert!(line.starts_with("not sent: full"), "{line}");
        assert!(!line.contains('\u{202e}'), "{line}");
        assert!(details(&d).starts_with("Not sent: full"));
    }
}
