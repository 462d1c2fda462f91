//! What the day starts from: each user's expected share of the day
//! connected, the deliveries it receives per second while away, its bound
//! of stored deliveries, and how long it has been away at midnight.
//!
//! Users alternate between connected (exponential sessions of mean
//! `session`) and away; while away, user `u` comes back at a rate
//! proportional to its engagement `e_u`, `x * e_u / session`. So it is
//! connected a fraction `p_u = x e_u / (1 + x e_u)` of the time, with `x`
//! such that the `p_u` add up to the day's mean of connected users. A
//! room's day-average message rate is then the room-sending rate of a
//! connected user times the sum over its members of `p_v / k_v` (a member
//! in `k_v` rooms splits its room messages evenly among them). These
//! estimates only set the state at midnight and when to look at a user's
//! bound; the day itself is simulated.

use crate::community::Community;

/// The estimates for every user.
#[derive(Debug)]
pub(crate) struct Estimates {
    /// Deliveries per second each user receives while away, day average.
    pub(crate) rate: Vec<f64>,
    /// The factor x of the module's description.
    pub(crate) return_factor: f64,
}

/// Estimates for a community whose mean connected count is
/// `mean_connected`, connected users sending `room_rate` room messages and
/// `dm_rate` direct messages per second each.
pub(crate) fn estimate(
    community: &Community,
    mean_connected: f64,
    room_rate: f64,
    dm_rate: f64,
) -> Estimates {
    let users = community.users();
    let engagement: Vec<f64> = (0..users as u32).map(|u| community.engagement(u)).collect();
    let sum_share = |x: f64| -> f64 { engagement.iter().map(|e| x * e / (1.0 + x * e)).sum() };
    // The sum rises with x: bisect on log x.
    let (mut low, mut high) = (-40.0f64, 40.0f64);
    let target = mean_connected.min(users as f64 * 0.999_999);
    for _ in 0..80 {
        let mid = 0.5 * (low + high);
        if sum_share(mid.exp()) < target {
            low = mid;
        } else {
            high = mid;
        }
    }
    let x = (0.5 * (low + high)).exp();
    let connected_share: Vec<f64> = engagement.iter().map(|e| x * e / (1.0 + x * e)).collect();

    let mut room_rate_of = vec![0.0f64; community.rooms()];
    for user in 0..users as u32 {
        let rooms = community.rooms_of(user);
        if rooms.is_empty() {
            continue;
        }
        let part = room_rate * connected_share[user as usize] / rooms.len() as f64;
        for &room in rooms {
            room_rate_of[room as usize] += part;
        }
    }
    let all_dms = dm_rate * mean_connected;
    let rate = (0..users as u32)
        .map(|user| {
            let rooms = community.rooms_of(user);
            let own = if rooms.is_empty() {
                0.0
            } else {
                room_rate * connected_share[user as usize] / rooms.len() as f64
            };
            let from_rooms: f64 = rooms
                .iter()
                .map(|&r| (room_rate_of[r as usize] - own).max(0.0))
                .sum();
            from_rooms + all_dms * community.partner_share(user)
        })
        .collect();
    Estimates {
        rate,
        return_factor: x,
    }
}
