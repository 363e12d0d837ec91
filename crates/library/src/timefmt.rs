//! Timestamps in stored JSON: RFC 3339 strings (jiff's own format), parsed strictly.

use serde::{Deserialize, Deserializer, Serializer};

pub fn serialize<S: Serializer>(time: &jiff::Timestamp, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(time)
}

pub fn deserialize<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<jiff::Timestamp, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(serde::de::Error::custom)
}
