//! The community: users with their engagement, rooms with their members,
//! and each user's direct-message partners.
//!
//! Users are numbered in order of engagement: user `u` of `n` connects
//! `spread^(u / (n - 1))` times as often as user 0, so engagement is
//! log-uniform between 1 and `--engagement-spread`. Rooms are filled from a
//! shuffled list of memberships, so how many rooms a user is in, and how
//! big they are, does not depend on the user's engagement. A user's room
//! count follows a power law over `1..=max-rooms-per-user` with mean
//! `--rooms-per-user`; room sizes follow `--room-mix`, log-uniform within
//! each band. Direct-message partners are not stored: partner `i` of user
//! `u` is a hash of both, mapped to a user in proportion to engagement
//! (people write to people who are around), and the relation need not be
//! mutual.

use rand::RngExt;
use rand::seq::SliceRandom;

use crate::SimError;
use crate::dist::{self, SimRng, Stream};
use crate::params::{Band, Params};

/// Fixed-point scale of the engagement weights.
const WEIGHT_ONE: f64 = 1024.0;

/// The generated community.
#[derive(Debug)]
pub(crate) struct Community {
    /// Engagement of each user, relative to the least engaged (1.0).
    engagement: Vec<f64>,
    /// Offsets into `user_rooms`, one per user and one past the end.
    user_start: Vec<u32>,
    user_rooms: Vec<u32>,
    /// Offsets into `room_members`, one per room and one past the end.
    room_start: Vec<u32>,
    room_members: Vec<u32>,
    /// The band each room was drawn from.
    room_band: Vec<u8>,
    bands: Vec<Band>,
    spread: f64,
    partners: u32,
    partner_key: u64,
}

impl Community {
    /// Generates the community described by the parameters.
    pub(crate) fn generate(params: &Params) -> Result<Self, SimError> {
        let c = &params.community;
        let bands = params.bands()?;
        if bands.len() > usize::from(u8::MAX) {
            return Err(SimError::Invalid(
                "--room-mix has more than 255 bands".into(),
            ));
        }
        let mut rng = dist::rng(params.run.seed, Stream::Community);
        let users = c.registered as usize;
        let spread = c.engagement_spread;
        let engagement: Vec<f64> = (0..users)
            .map(|u| spread.powf(u as f64 / (users - 1).max(1) as f64))
            .collect();

        // How many rooms each user is in, as a list of memberships to fill.
        let counts = RoomCounts::new(c.rooms_per_user, c.max_rooms_per_user);
        let mut memberships: Vec<u32> = Vec::new();
        for u in 0..c.registered {
            let k = counts.draw(&mut rng);
            memberships.extend(std::iter::repeat_n(u, k as usize));
        }
        memberships.shuffle(&mut rng);
        let total = memberships.len();
        if total > u32::MAX as usize / 2 {
            return Err(SimError::Invalid("too many memberships".into()));
        }

        // Rooms, drawn from the mix until they hold every membership.
        let cumulative: Vec<f64> = bands
            .iter()
            .scan(0.0, |sum, band| {
                *sum += band.share;
                Some(*sum)
            })
            .collect();
        let mut last_room = vec![u32::MAX; users];
        let mut room_start = vec![0u32];
        let mut room_members: Vec<u32> = Vec::with_capacity(total);
        let mut room_band: Vec<u8> = Vec::new();
        let mut next = 0usize;
        while next < total {
            let pick: f64 = rng.random();
            let band_index = cumulative
                .iter()
                .position(|&c| pick < c)
                .unwrap_or(bands.len() - 1);
            let band = bands[band_index];
            let size = log_uniform(&mut rng, band.lo, band.hi);
            let room = room_band.len() as u32;
            for _ in 0..size {
                if next >= total {
                    break;
                }
                if last_room[memberships[next] as usize] == room {
                    // Already a member: swap in a later membership of
                    // someone else, or drop this one if none turns up.
                    let mut found = false;
                    for _ in 0..32 {
                        if next + 1 >= total {
                            break;
                        }
                        let other = rng.random_range(next + 1..total);
                        if last_room[memberships[other] as usize] != room {
                            memberships.swap(next, other);
                            found = true;
                            break;
                        }
                    }
                    if !found {
                        next += 1;
                        continue;
                    }
                }
                let member = memberships[next];
                last_room[member as usize] = room;
                room_members.push(member);
                next += 1;
            }
            room_start.push(room_members.len() as u32);
            room_band.push(band_index as u8);
        }

        // Each user's rooms, from the rooms' members.
        let mut user_start = vec![0u32; users + 1];
        for &member in &room_members {
            user_start[member as usize + 1] += 1;
        }
        for u in 0..users {
            user_start[u + 1] += user_start[u];
        }
        let mut fill = user_start.clone();
        let mut user_rooms = vec![0u32; room_members.len()];
        for room in 0..room_band.len() {
            let (start, end) = (room_start[room] as usize, room_start[room + 1] as usize);
            for &member in &room_members[start..end] {
                let slot = &mut fill[member as usize];
                user_rooms[*slot as usize] = room as u32;
                *slot += 1;
            }
        }
        Ok(Self {
            engagement,
            user_start,
            user_rooms,
            room_start,
            room_members,
            room_band,
            bands,
            spread,
            partners: c.dm_partners,
            partner_key: dist::mix(params.run.seed ^ 0x5050_4152_544e_4552),
        })
    }

    /// Registered users.
    pub(crate) fn users(&self) -> usize {
        self.engagement.len()
    }

    /// Rooms.
    pub(crate) fn rooms(&self) -> usize {
        self.room_band.len()
    }

    /// A user's engagement (how often it connects), least engaged 1.0.
    pub(crate) fn engagement(&self, user: u32) -> f64 {
        self.engagement[user as usize]
    }

    /// Every user's engagement as the weights of a draw.
    pub(crate) fn weights(&self) -> Vec<u64> {
        (0..self.users() as u32)
            .map(|u| u64::from(self.weight(u)))
            .collect()
    }

    /// A user's engagement as its weight in a draw (below 2^31: the spread
    /// is at most 1e6).
    pub(crate) fn weight(&self, user: u32) -> u32 {
        (self.engagement(user) * WEIGHT_ONE).round() as u32
    }

    /// Where a user's rooms are in the list of memberships: start, count.
    pub(crate) fn rooms_span(&self, user: u32) -> (u32, u32) {
        let u = user as usize;
        (
            self.user_start[u],
            self.user_start[u + 1] - self.user_start[u],
        )
    }

    /// A stretch of the list of memberships (see `rooms_span`).
    pub(crate) fn memberships(&self, from: u32, len: u32) -> &[u32] {
        &self.user_rooms[from as usize..(from + len) as usize]
    }

    /// The rooms a user is in.
    pub(crate) fn rooms_of(&self, user: u32) -> &[u32] {
        let u = user as usize;
        &self.user_rooms[self.user_start[u] as usize..self.user_start[u + 1] as usize]
    }

    /// The members of a room.
    pub(crate) fn members_of(&self, room: u32) -> &[u32] {
        let r = room as usize;
        &self.room_members[self.room_start[r] as usize..self.room_start[r + 1] as usize]
    }

    /// Members of a room.
    pub(crate) fn size_of(&self, room: u32) -> u32 {
        let r = room as usize;
        self.room_start[r + 1] - self.room_start[r]
    }

    /// The band a room was drawn from.
    pub(crate) fn band_of(&self, room: u32) -> usize {
        usize::from(self.room_band[room as usize])
    }

    /// The room-size bands.
    pub(crate) fn bands(&self) -> &[Band] {
        &self.bands
    }

    /// Direct-message partners per user.
    pub(crate) fn partners(&self) -> u32 {
        self.partners
    }

    /// Partner `i` of `user`: a user other than `user`, drawn by a hash in
    /// proportion to engagement.
    pub(crate) fn partner(&self, user: u32, i: u32) -> u32 {
        let n = self.users();
        let hash = dist::mix(self.partner_key ^ (u64::from(user) << 16) ^ u64::from(i));
        let r = dist::unit(hash);
        // Inverse of the engagement's distribution: density spread^x on [0, 1).
        let x = if self.spread > 1.0 + 1e-12 {
            (1.0 + r * (self.spread - 1.0)).ln() / self.spread.ln()
        } else {
            r
        };
        let partner = ((x * n as f64) as usize).min(n - 1) as u32;
        if partner == user {
            (partner + 1) % n as u32
        } else {
            partner
        }
    }

    /// The share of all engagement that is this user's: the chance that a
    /// direct message, whoever sends it, is for them.
    pub(crate) fn partner_share(&self, user: u32) -> f64 {
        let total = self.total_engagement();
        self.engagement(user) / total
    }

    /// The sum of all users' engagement.
    pub(crate) fn total_engagement(&self) -> f64 {
        let n = self.users() as f64;
        if self.spread > 1.0 + 1e-12 {
            // The integral of spread^x over [0, 1], times n (exact enough).
            n * (self.spread - 1.0) / self.spread.ln()
        } else {
            n
        }
    }
}

/// How many rooms a user is in: P(k) proportional to k^-gamma over
/// 1..=max, gamma chosen for the wanted mean.
#[derive(Debug)]
struct RoomCounts {
    cumulative: Vec<f64>,
}

impl RoomCounts {
    fn new(mean: f64, max: u32) -> Self {
        let mean_of = |gamma: f64| {
            let (mut weighted, mut total) = (0.0, 0.0);
            for k in 1..=max {
                let p = f64::from(k).powf(-gamma);
                weighted += f64::from(k) * p;
                total += p;
            }
            weighted / total
        };
        // The mean falls as gamma rises: bisect.
        let (mut low, mut high) = (-20.0f64, 20.0f64);
        for _ in 0..100 {
            let mid = 0.5 * (low + high);
            if mean_of(mid) > mean {
                low = mid;
            } else {
                high = mid;
            }
        }
        let gamma = 0.5 * (low + high);
        let weights: Vec<f64> = (1..=max).map(|k| f64::from(k).powf(-gamma)).collect();
        let total: f64 = weights.iter().sum();
        let cumulative = weights
            .iter()
            .scan(0.0, |sum, w| {
                *sum += w / total;
                Some(*sum)
            })
            .collect();
        Self { cumulative }
    }

    fn draw(&self, rng: &mut SimRng) -> u32 {
        let pick: f64 = rng.random();
        let index = self.cumulative.partition_point(|&c| c <= pick);
        (index.min(self.cumulative.len() - 1) + 1) as u32
    }
}

/// A whole number log-uniform in lo..=hi.
fn log_uniform(rng: &mut SimRng, lo: u32, hi: u32) -> u32 {
    let (a, b) = (f64::from(lo).ln(), (f64::from(hi) + 1.0).ln());
    let x: f64 = rng.random();
    ((a + x * (b - a)).exp().floor() as u32).clamp(lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(args: &[&str]) -> Community {
        let mut argv = vec!["scaling-sim", "--registered", "5000", "--connected", "500"];
        argv.extend_from_slice(args);
        let (params, _) = Params::parse_args(argv).unwrap();
        Community::generate(&params).unwrap()
    }

    #[test]
    fn rooms_hold_distinct_members_and_users_know_their_rooms() {
        let c = small(&["--room-mix", "3-10:70,11-100:30"]);
        let mut memberships = 0;
        for room in 0..c.rooms() as u32 {
            let mut members = c.members_of(room).to_vec();
            memberships += members.len();
            members.sort_unstable();
            members.dedup();
            assert_eq!(members.len(), c.members_of(room).len(), "room {room}");
            for &m in &members {
                assert!(c.rooms_of(m).contains(&room));
            }
        }
        let per_user: usize = (0..5000).map(|u| c.rooms_of(u).len()).sum();
        assert_eq!(per_user, memberships);
        let mean = memberships as f64 / 5000.0;
        assert!((mean - 8.0).abs() < 0.5, "mean rooms per user {mean}");
    }

    #[test]
    fn room_sizes_follow_the_mix() {
        let c = small(&["--room-mix", "3-10:50,20-30:50"]);
        let (mut small_rooms, mut big_rooms) = (0, 0);
        for room in 0..c.rooms() as u32 - 1 {
            let size = c.size_of(room);
            match c.band_of(room) {
                0 => {
                    small_rooms += 1;
                    assert!((3..=10).contains(&size), "{size}");
                }
                _ => {
                    big_rooms += 1;
                    assert!((20..=30).contains(&size), "{size}");
                }
            }
        }
        let share = f64::from(small_rooms) / f64::from(small_rooms + big_rooms);
        assert!((share - 0.5).abs() < 0.08, "{share}");
    }

    #[test]
    fn partners_are_others_and_favour_the_engaged() {
        let c = small(&[]);
        let mut top_half = 0;
        for u in 0..2000u32 {
            for i in 0..c.partners() {
                let p = c.partner(u, i);
                assert_ne!(p, u);
                assert!((p as usize) < c.users());
                if p >= 2500 {
                    top_half += 1;
                }
            }
        }
        // Engagement log-uniform over 1..600: the upper half of users
        // holds sqrt(600)/(1+sqrt(600)) = 96% of it.
        let share = f64::from(top_half) / 40_000.0;
        assert!(share > 0.9, "{share}");
        let sum: f64 = (0..5000).map(|u| c.partner_share(u)).sum();
        assert!((sum - 1.0).abs() < 0.01, "{sum}");
    }
}
