//! Scalars as PVE really sends and accepts them.
//!
//! PVE's Perl backend types JSON by the scalar's last use, not by the schema:
//! booleans arrive as `0`/`1` (or `"1"`), integers and numbers sometimes as
//! strings (`/cluster/nextid` answers `{"data":"105"}`, config `cpulimit` is
//! `"1.5"`). On the way in, its boolean check accepts only `0`/`1`. The
//! generated client uses these types wherever the schema says boolean, and for
//! integers and numbers in responses.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A boolean that is written as `0`/`1` and read from any of PVE's spellings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PveBool(pub bool);

/// An integer that may arrive as a JSON number or a numeric string.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PveInt(pub i64);

/// A floating-point number that may arrive as a JSON number or a numeric string.
#[derive(Debug, Clone, Copy, Default, PartialEq, PartialOrd)]
pub struct PveNumber(pub f64);

/// Text that older PVE releases may send as a bare number (config `memory`
/// was an integer before 8.1 made it a property string).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PveText(pub String);

impl std::ops::Deref for PveText {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<String> for PveText {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<PveText> for String {
    fn from(value: PveText) -> Self {
        value.0
    }
}

impl fmt::Display for PveText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for PveText {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PveText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl Visitor<'_> for TextVisitor {
            type Value = PveText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PveText, E> {
                Ok(PveText(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<PveText, E> {
                Ok(PveText(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PveText, E> {
                Ok(PveText(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PveText, E> {
                Ok(PveText(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<PveText, E> {
                Ok(PveText(v.to_string()))
            }
        }
        deserializer.deserialize_any(TextVisitor)
    }
}

impl From<bool> for PveBool {
    fn from(value: bool) -> Self {
        Self(value)
    }
}

impl From<PveBool> for bool {
    fn from(value: PveBool) -> Self {
        value.0
    }
}

impl From<i64> for PveInt {
    fn from(value: i64) -> Self {
        Self(value)
    }
}

impl From<PveInt> for i64 {
    fn from(value: PveInt) -> Self {
        value.0
    }
}

impl From<f64> for PveNumber {
    fn from(value: f64) -> Self {
        Self(value)
    }
}

impl From<PveNumber> for f64 {
    fn from(value: PveNumber) -> Self {
        value.0
    }
}

impl fmt::Display for PveBool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0 { "1" } else { "0" })
    }
}

impl fmt::Display for PveInt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for PveNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for PveBool {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // PVE rejects `true`/`false` in query strings and form bodies.
        serializer.serialize_u8(u8::from(self.0))
    }
}

impl Serialize for PveInt {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_i64(self.0)
    }
}

impl Serialize for PveNumber {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(self.0)
    }
}

impl<'de> Deserialize<'de> for PveBool {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BoolVisitor;
        impl Visitor<'_> for BoolVisitor {
            type Value = PveBool;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a boolean, 0/1 or a boolean string")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<PveBool, E> {
                Ok(PveBool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PveBool, E> {
                Ok(PveBool(v != 0))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PveBool, E> {
                Ok(PveBool(v != 0))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<PveBool, E> {
                Ok(PveBool(v != 0.0))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PveBool, E> {
                match v.trim().to_ascii_lowercase().as_str() {
                    "1" | "true" | "yes" | "on" => Ok(PveBool(true)),
                    "0" | "false" | "no" | "off" | "" => Ok(PveBool(false)),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
        }
        deserializer.deserialize_any(BoolVisitor)
    }
}

impl<'de> Deserialize<'de> for PveInt {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IntVisitor;
        impl Visitor<'_> for IntVisitor {
            type Value = PveInt;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer or a numeric string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PveInt, E> {
                Ok(PveInt(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PveInt, E> {
                i64::try_from(v).map(PveInt).map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<PveInt, E> {
                // Perl may hand out `2048.0` for an integer it computed.
                if v.fract() == 0.0 && v.abs() < 9.0e18 {
                    Ok(PveInt(v as i64))
                } else {
                    Err(E::invalid_value(de::Unexpected::Float(v), &self))
                }
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<PveInt, E> {
                Ok(PveInt(i64::from(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PveInt, E> {
                let trimmed = v.trim();
                if let Ok(n) = trimmed.parse::<i64>() {
                    return Ok(PveInt(n));
                }
                match trimmed.parse::<f64>() {
                    Ok(f) => self.visit_f64(f),
                    Err(_) => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
        }
        deserializer.deserialize_any(IntVisitor)
    }
}

impl<'de> Deserialize<'de> for PveNumber {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NumberVisitor;
        impl Visitor<'_> for NumberVisitor {
            type Value = PveNumber;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number or a numeric string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PveNumber, E> {
                Ok(PveNumber(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PveNumber, E> {
                Ok(PveNumber(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<PveNumber, E> {
                Ok(PveNumber(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PveNumber, E> {
                v.trim().parse::<f64>().map(PveNumber).map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }
        deserializer.deserialize_any(NumberVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bools_read_every_pve_spelling_and_write_digits() {
        for (json, expected) in
            [("1", true), ("0", false), ("true", true), ("\"1\"", true), ("\"off\"", false), ("2", true)]
        {
            assert_eq!(serde_json::from_str::<PveBool>(json).unwrap(), PveBool(expected), "{json}");
        }
        assert!(serde_json::from_str::<PveBool>("\"maybe\"").is_err());
        assert_eq!(serde_json::to_string(&PveBool(true)).unwrap(), "1");
        #[derive(Serialize)]
        struct Form {
            full: PveBool,
        }
        assert_eq!(serde_urlencoded::to_string(Form { full: PveBool(false) }).unwrap(), "full=0");
    }

    #[test]
    fn text_reads_numbers_from_older_releases() {
        assert_eq!(serde_json::from_str::<PveText>("2048").unwrap(), PveText("2048".into()));
        assert_eq!(serde_json::from_str::<PveText>("\"current=2048\"").unwrap(), PveText("current=2048".into()));
        assert_eq!(serde_json::to_string(&PveText("4096".into())).unwrap(), "\"4096\"");
    }

    #[test]
    fn numbers_read_from_strings() {
        assert_eq!(serde_json::from_str::<PveInt>("\"105\"").unwrap(), PveInt(105));
        assert_eq!(serde_json::from_str::<PveInt>("2048.0").unwrap(), PveInt(2048));
        assert!(serde_json::from_str::<PveInt>("1.5").is_err());
        assert!(serde_json::from_str::<PveInt>("\"abc\"").is_err());
        assert_eq!(serde_json::from_str::<PveNumber>("\"1.5\"").unwrap(), PveNumber(1.5));
        assert_eq!(serde_json::from_str::<PveNumber>("3").unwrap(), PveNumber(3.0));
    }
}
