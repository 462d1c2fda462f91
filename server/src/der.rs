//! The little of DER (X.690) the relay reads itself: when an X.509
//! certificate expires (RFC 5280 4.1.2.5), for the expiry metric and
//! `relay check-config`. rustls checks certificates; this only reports.

/// The end of `cert`'s validity (its `notAfter`), in Unix seconds, or
/// `None` if `cert` is not a certificate this can read.
///
/// `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version
/// OPTIONAL, serialNumber INTEGER, signature SEQUENCE, issuer SEQUENCE,
/// validity SEQUENCE { notBefore Time, notAfter Time }, ... }, ... }`.
pub(crate) fn not_after(cert: &[u8]) -> Option<u64> {
    let (certificate, _) = element(cert, SEQUENCE)?;
    let (mut tbs, _) = element(certificate, SEQUENCE)?;
    if tbs.first() == Some(&VERSION) {
        (_, tbs) = element(tbs, VERSION)?;
    }
    let (_, rest) = element(tbs, INTEGER)?;
    let (_, rest) = element(rest, SEQUENCE)?;
    let (_, rest) = element(rest, SEQUENCE)?;
    let (validity, _) = element(rest, SEQUENCE)?;
    let (_, not_after) = any_element(validity)?;
    match not_after.first() {
        Some(&UTC_TIME) => {
            let (text, _) = element(not_after, UTC_TIME)?;
            // RFC 5280: YYMMDDHHMMSSZ, years 50-99 are 19YY.
            let (yy, rest) = text.split_first_chunk::<2>()?;
            let yy = i64::from(two_digits(*yy)?);
            let year = if yy >= 50 { 1900 + yy } else { 2000 + yy };
            unix_seconds(year, rest)
        }
        Some(&GENERALIZED_TIME) => {
            let (text, _) = element(not_after, GENERALIZED_TIME)?;
            // YYYYMMDDHHMMSSZ.
            let (century, rest) = text.split_first_chunk::<2>()?;
            let (yy, rest) = rest.split_first_chunk::<2>()?;
            let year = i64::from(two_digits(*century)?) * 100 + i64::from(two_digits(*yy)?);
            unix_seconds(year, rest)
        }
        _ => None,
    }
}

const INTEGER: u8 = 0x02;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
const SEQUENCE: u8 = 0x30;
/// `[0] EXPLICIT`, the version of a v2 or v3 certificate.
const VERSION: u8 = 0xa0;

/// The contents of the element at the start of `bytes`, which must have
/// the tag `tag`, and what follows it.
fn element(bytes: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if bytes.first() != Some(&tag) {
        return None;
    }
    any_element(bytes)
}

/// The contents of the element at the start of `bytes`, whatever its
/// (one-byte) tag, and what follows it.
fn any_element(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = bytes.get(1..)?.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None; // indefinite (not DER) or beyond any certificate
        }
        let (digits, rest) = (rest.get(..count)?, rest.get(count..)?);
        let len = digits
            .iter()
            .fold(0usize, |len, &digit| (len << 8) | usize::from(digit));
        (len, rest)
    };
    Some((rest.get(..len)?, rest.get(len..)?))
}

fn two_digits([tens, ones]: [u8; 2]) -> Option<u8> {
    let digit = |b: u8| b.is_ascii_digit().then(|| b - b'0');
    Some(digit(tens)? * 10 + digit(ones)?)
}

/// `MMDDHHMMSSZ` of the year `year` in Unix seconds (DER times are UTC,
/// with seconds and a `Z`).
fn unix_seconds(year: i64, text: &[u8]) -> Option<u64> {
    let [mo, mo1, d, d1, h, h1, mi, mi1, s, s1, b'Z'] = *text else {
        return None;
    };
    let month = two_digits([mo, mo1])?;
    let day = two_digits([d, d1])?;
    let (hour, minute, second) = (
        two_digits([h, h1])?,
        two_digits([mi, mi1])?,
        two_digits([s, s1])?,
    );
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let seconds = days_since_epoch(year, month, day) * 86_400
        + i64::from(hour) * 3600
        + i64::from(minute) * 60
        + i64::from(second);
    u64::try_from(seconds).ok()
}

/// Days from 1970-01-01 to `year`-`month`-`day` in the proleptic
/// Gregorian calendar: years counted from March, so that the leap day
/// ends a year, in 400-year eras of 146,097 days.
fn days_since_epoch(year: i64, month: u8, day: u8) -> i64 {
    let (month, day) = (i64::from(month), i64::from(day));
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate_until(year: i32, month: u8, day: u8) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.not_after = rcgen::date_time_ymd(year, month, day);
        params.self_signed(&key).unwrap().der().to_vec()
    }

    /// Both encodings of RFC 5280: UTCTime up to 2049, GeneralizedTime
    /// from 2050, each checked against dates counted independently.
    #[test]
    fn the_end_of_validity_is_read_in_either_encoding() {
        // 2031-05-17: 22,416 days after 1970-01-01.
        assert_eq!(
            not_after(&certificate_until(2031, 5, 17)),
            Some(22_416 * 86_400)
        );
        // 2000-02-29, a leap day of a year divisible by 400: 11,016 days.
        assert_eq!(
            not_after(&certificate_until(2000, 2, 29)),
            Some(11_016 * 86_400)
        );
        // 2051-01-01 (GeneralizedTime): 29,585 days.
        assert_eq!(
            not_after(&certificate_until(2051, 1, 1)),
            Some(29_585 * 86_400)
        );
        // rcgen's default, 4096-01-01, the end of a generated certificate.
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        let generated = params.self_signed(&key).unwrap().der().to_vec();
        assert_eq!(not_after(&generated), Some(776_506 * 86_400));
    }

    /// Anything cut short or not a certificate gives `None`, never a
    /// panic or a made-up date.
    #[test]
    fn what_is_not_a_certificate_has_no_expiry() {
        let cert = certificate_until(2031, 5, 17);
        for len in 0..cert.len() {
            assert_eq!(not_after(cert.get(..len).unwrap()), None, "cut at {len}");
        }
        assert_eq!(not_after(b"not a certificate at all"), None);
        assert_eq!(not_after(&[0x30, 0x80, 0, 0]), None);
        assert_eq!(unix_seconds(2031, b"0517000000"), None);
        assert_eq!(unix_seconds(2031, b"1317000000Z"), None);
        assert_eq!(unix_seconds(2031, b"05a7000000Z"), None);
    }
}
