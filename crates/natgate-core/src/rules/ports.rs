//! Serde for an optional [`PortRange`]: `80` for one port, `"1024-2047"` for a range.

use super::PortRange;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The config text form: a number for one port, a string for a range (or one port).
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Text {
    One(u16),
    Range(String),
}

/// Writes a single port as a number and a range as `"first-last"`.
pub(super) fn serialize<S: Serializer>(r: &Option<PortRange>, s: S) -> Result<S::Ok, S::Error> {
    match r {
        Some(r) if r.first == r.last => Text::One(r.first).serialize(s),
        Some(r) => Text::Range(r.to_string()).serialize(s),
        None => s.serialize_none(),
    }
}

/// Reads `80`, `"80"` or `"1024-2047"` (first not after last).
pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PortRange>, D::Error> {
    let range = match Text::deserialize(d)? {
        Text::One(p) => PortRange { first: p, last: p },
        Text::Range(s) => parse(&s).map_err(serde::de::Error::custom)?,
    };
    Ok(Some(range))
}

fn parse(s: &str) -> Result<PortRange, String> {
    let port = |t: &str| {
        t.trim()
            .parse::<u16>()
            .map_err(|e| format!("port {t:?} in {s:?}: {e}"))
    };
    let (first, last) = match s.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => (port(s)?, port(s)?),
    };
    if first > last {
        return Err(format!("port range {s:?}: {first} is after {last}"));
    }
    Ok(PortRange { first, last })
}
