//! The engine's tests: small communities, a few simulated minutes.

use super::*;

impl Engine<'_> {
    /// Recounts what is stored from every user's own figures.
    fn audit(&self) -> i64 {
        let mut total = 0i64;
        for user in 0..self.users.len() as u32 {
            let record = &self.users[user as usize];
            total += match record.presence {
                Presence::Connected => i64::from(record.drain),
                _ if record.capped => i64::from(record.bound),
                _ => self.missed(user) as i64,
            };
        }
        total
    }

    /// No more messages and no chance arrivals or departures; everyone
    /// away queues for a handshake.
    fn bring_everyone_back(&mut self) {
        self.quiet = true;
        for user in 0..self.users.len() {
            if self.users[user].presence == Presence::Away {
                self.away.set(user, 0);
                self.users[user].presence = Presence::Handshaking;
                let relay = self.pick_relay();
                self.queue[relay].push_back(user as u32);
                self.handshaking += 1;
            }
        }
    }
}

/// A small community for an hour at its peak, no failures; each
/// `(flag, value)` replaces the default or adds a flag.
fn params(changes: &[(&str, &str)]) -> Params {
    let mut args: Vec<(String, String)> = [
        ("--registered", "3000"),
        ("--connected", "900"),
        ("--seconds", "1800"),
        ("--peak-hour", "0.25"),
        ("--trough-hour", "12"),
        ("--room-mix", "3-10:70,11-200:30"),
        ("--fail-relay-at", "999999"),
        ("--fail-nats-leader-at", "999999"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    for (flag, value) in changes {
        match args.iter_mut().find(|(k, _)| k == flag) {
            Some(arg) => arg.1 = (*value).to_owned(),
            None => args.push(((*flag).to_owned(), (*value).to_owned())),
        }
    }
    let mut argv = vec!["scaling-sim".to_owned()];
    for (k, v) in args {
        argv.push(k);
        argv.push(v);
    }
    Params::parse_args(argv).unwrap().0
}

fn plan(p: &Params) -> Plan {
    Plan {
        relays: p.cluster.relays as usize,
        relay_failure: p.relay_failure_at(),
        leader_failure: p.leader_failure_at(),
    }
}

#[test]
fn direct_messages_make_one_delivery_each() {
    let p = params(&[("--dm-share", "1")]);
    let c = Community::generate(&p).unwrap();
    let day = Engine::new(&p, &c, plan(&p)).run();
    let t = day.totals;
    assert!(t.dm_messages > 100, "{t:?}");
    assert_eq!(t.room_messages, 0);
    assert_eq!(t.deliveries, t.dm_messages);
    for s in &day.seconds {
        assert_eq!(s.deliveries, s.dm_messages);
    }
}

#[test]
fn a_room_message_makes_one_delivery_per_other_member() {
    let p = params(&[("--dm-share", "0"), ("--room-mix", "10-10:100")]);
    let c = Community::generate(&p).unwrap();
    // Every room has 10 members but the last, filled with what is left.
    let full = (0..c.rooms() as u32)
        .filter(|&r| c.size_of(r) == 10)
        .count();
    assert!(full + 1 >= c.rooms());
    let mut engine = Engine::new(&p, &c, plan(&p));
    let mut deliveries = 0.0;
    let mut messages = 0.0;
    for t in 0..p.run.seconds {
        let s = engine.step(t);
        deliveries += s.deliveries;
        messages += s.room_messages;
    }
    let expected: u64 = (0..c.rooms())
        .map(|r| engine.rooms[r].messages * u64::from(engine.rooms[r].size - 1))
        .sum();
    assert!(messages > 100.0);
    assert_eq!(deliveries, expected as f64);
    assert_eq!(engine.totals.dm_messages, 0);
    let per_message = deliveries / messages;
    assert!((per_message - 9.0).abs() < 0.05, "{per_message}");
}

#[test]
fn stored_deliveries_never_go_negative_and_drain_to_zero_when_all_return() {
    let p = params(&[("--relays", "2")]);
    let c = Community::generate(&p).unwrap();
    let mut engine = Engine::new(&p, &c, plan(&p));
    assert!(
        engine.stored > 0,
        "users away at midnight have deliveries stored"
    );
    assert_eq!(engine.stored, engine.audit());
    let mut t = 0;
    while t < 1200 {
        let s = engine.step(t);
        assert!(s.stored >= 0.0);
        if t % 100 == 0 {
            assert_eq!(engine.stored, engine.audit(), "second {t}");
        }
        t += 1;
    }
    assert!(engine.totals.stored_new > 0 && engine.totals.drained > 0);
    engine.bring_everyone_back();
    while t < p.run.seconds {
        let s = engine.step(t);
        assert!(s.stored >= 0.0);
        assert_eq!(s.deliveries, 0.0);
        assert_eq!(engine.stored, engine.audit(), "second {t}");
        t += 1;
    }
    assert_eq!(engine.handshaking, 0);
    assert_eq!(engine.connected.len(), c.users());
    assert_eq!(engine.stored, 0);
}

#[test]
fn users_and_messages_follow_the_day_and_the_rate() {
    let p = params(&[("--seconds", "3600")]);
    let c = Community::generate(&p).unwrap();
    let day = Engine::new(&p, &c, plan(&p)).run();
    let curve = Diurnal::new(&p);
    let (mut got, mut want) = (0.0, 0.0);
    for (t, s) in day.seconds.iter().enumerate().skip(300) {
        got += s.connected;
        want += curve.connected(t as u32);
    }
    assert!((got / want - 1.0).abs() < 0.05, "{got} vs {want}");
    // Messages per connected user-second against the rate at that time.
    let (mut sent, mut expected) = (0.0, 0.0);
    for (t, s) in day.seconds.iter().enumerate() {
        sent += s.dm_messages + s.room_messages;
        expected += s.connected * 100.0 / 86_400.0 * curve.activity(t as u32);
    }
    assert!((sent / expected - 1.0).abs() < 0.05, "{sent} vs {expected}");
}

#[test]
fn a_killed_relay_loses_nothing_and_its_users_come_back() {
    let p = params(&[("--relays", "3"), ("--fail-relay-at", "600")]);
    let c = Community::generate(&p).unwrap();
    let mut engine = Engine::new(&p, &c, plan(&p));
    for t in 0..p.run.seconds {
        engine.step(t);
        if t == 600 {
            assert!(!engine.alive[0]);
            assert_eq!(engine.users_on[0], 0);
        }
    }
    assert_eq!(engine.stored, engine.audit());
    let outage = engine.outage.as_ref().unwrap();
    let f = &outage.report;
    assert!(f.users > 50, "{f:?}");
    assert_eq!(f.survivors, 2);
    let back = f.all_back_after.unwrap();
    assert!(back >= p.costs.failover_secs && back < 60.0, "{back}");
    // Relay 0 is back after 600 s and takes connections again.
    assert!(engine.alive[0]);
    assert!(engine.users_on[0] > 0);
}

#[test]
fn a_lost_stream_leader_stalls_the_cluster_then_catches_up() {
    let p = params(&[
        ("--fail-nats-leader-at", "600"),
        ("--nats-cores", "8"),
        ("--election-secs", "5"),
    ]);
    let c = Community::generate(&p).unwrap();
    let day = Engine::new(&p, &c, plan(&p)).run();
    let f = day.leader_failure.unwrap();
    // 5 s rounded up to the relays' 2 s retries.
    assert_eq!(f.stalled_secs, 6);
    assert_eq!(f.new_leader, Some(1));
    assert!(f.messages_waiting > 0);
    assert!(f.peak_backlog_secs > 0.0);
    assert!(f.normal_after.unwrap() < 5.0);
    for t in 600..606 {
        assert_eq!(
            day.seconds[t].follower_served, 0.0,
            "nothing replicated at {t}"
        );
        assert!(day.seconds[t].leader_backlog > 0.0);
    }
    assert!(f.catch_up_bytes > 0.0);
}

#[test]
fn a_leader_short_of_cores_falls_behind() {
    let p = params(&[("--nats-cores", "0.001")]);
    let c = Community::generate(&p).unwrap();
    let day = Engine::new(&p, &c, plan(&p)).run();
    let backlog: Vec<f64> = day.seconds.iter().map(|s| s.leader_backlog).collect();
    assert!(backlog.last().unwrap() > &backlog[600]);
    assert!(day.seconds.iter().all(|s| s.follower_served <= 0.5 + 1e-9));
    assert!(day.seconds.iter().any(|s| s.follower_cpu > 0.5));
}

#[test]
fn the_same_seed_gives_the_same_report() {
    let args = |seed: &'static str| {
        vec![
            "scaling-sim",
            "--registered",
            "2000",
            "--connected",
            "400",
            "--seconds",
            "900",
            "--fail-relay-at",
            "300",
            "--fail-nats-leader-at",
            "600",
            "--room-mix",
            "3-10:70,11-200:30",
            "--seed",
            seed,
        ]
    };
    let first = crate::run(args("7")).unwrap();
    let again = crate::run(args("7")).unwrap();
    let other = crate::run(args("8")).unwrap();
    assert_eq!(first, again);
    assert_ne!(first, other);
    assert!(first.contains("## Failure: relay 0 killed at 00:05:00"));
    assert!(first.contains("--seed 7"));
}
