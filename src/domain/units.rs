//! Units a person types ("4GiB", "50%") and the canonical numbers the API stores.
//!
//! `Bytes` and `Percent` deserialize from either a JSON/TOML number (canonical) or
//! a string with a unit, and always serialize as plain numbers.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A byte count. Accepts `1073741824`, `"1073741824"`, `"4GiB"`, `"512M"`, `"1.5 GiB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bytes(pub u64);

/// A percentage with two decimals of precision. Accepts `50`, `12.5`, `"50%"`.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Percent(pub f64);

/// Parses a byte size. Binary suffixes (K, Ki, KiB, M, MiB, G, GiB, T, TiB) are powers
/// of 1024, as in the kernel's own `memory.max` parser; `KB`, `MB`, `GB`, `TB` are powers of 1000.
pub fn parse_bytes(input: &str) -> Result<u64, String> {
    let s = input.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "'{input}' is not a size: expected a number such as 4GiB"
        ));
    }
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "Ki" | "KiB" => 1 << 10,
        "M" | "Mi" | "MiB" => 1 << 20,
        "G" | "Gi" | "GiB" => 1 << 30,
        "T" | "Ti" | "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "'{input}' has an unknown unit '{other}': use B, KiB, MiB, GiB or TiB"
            ));
        }
    };
    if num.contains('.') {
        let v: f64 = num
            .parse()
            .map_err(|_| format!("'{input}' is not a size: bad number '{num}'"))?;
        let bytes = v * mult as f64;
        if !bytes.is_finite() || bytes > u64::MAX as f64 {
            return Err(format!("'{input}' is too large"));
        }
        Ok(bytes.round() as u64)
    } else {
        let v: u64 = num
            .parse()
            .map_err(|_| format!("'{input}' is not a size: bad number '{num}'"))?;
        v.checked_mul(mult)
            .ok_or_else(|| format!("'{input}' is too large"))
    }
}

/// Parses a percentage: `"50%"`, `"50"`, `"12.5 %"`.
pub fn parse_percent(input: &str) -> Result<f64, String> {
    let s = input.trim();
    let s = s.strip_suffix('%').unwrap_or(s).trim();
    let v: f64 = s
        .parse()
        .map_err(|_| format!("'{input}' is not a percentage: expected a number such as 50%"))?;
    if !v.is_finite() {
        return Err(format!("'{input}' is not a finite percentage"));
    }
    Ok(v)
}

/// Formats a byte count for people: 4294967296 -> "4 GiB", 1536 -> "1.5 KiB".
pub fn format_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else if (v - v.round()).abs() < 0.005 {
        format!("{} {}", v.round() as u64, UNITS[i])
    } else {
        format!("{v:.2} {}", UNITS[i])
    }
}

/// A JSON number that is a whole number, however it is written: `2`, `2.0` and `2e3` are all
/// whole (JSON Schema's `integer` counts them so too); `2.5`, negatives and values past
/// `u64::MAX` are not.
pub fn whole(v: f64) -> Option<u64> {
    // 2^64 as f64: the first value a u64 cannot hold.
    const LIMIT: f64 = 18_446_744_073_709_551_616.0;
    (v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v < LIMIT).then_some(v as u64)
}

/// `deserialize_with` helpers for counts (PIDs, IOPS, process slots): a whole number written
/// as an integer or as a float (`1238500.0`), refused with its reason otherwise.
pub mod count {
    use super::whole;
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Num {
        U(u64),
        I(i64),
        F(f64),
    }

    fn any<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let bad = |what: String| serde::de::Error::custom(what);
        match Num::deserialize(d).map_err(|_| bad("expected a whole number".into()))? {
            Num::U(v) => Ok(v),
            Num::I(v) => Err(bad(format!(
                "{v} is negative: expected a whole number, 0 or more"
            ))),
            Num::F(v) => whole(v).ok_or_else(|| bad(format!("{v} is not a whole number"))),
        }
    }

    pub fn u64_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        Option::<serde_json::Value>::deserialize(d)?
            .filter(|v| !v.is_null())
            .map(|v| any(v).map_err(serde::de::Error::custom))
            .transpose()
    }

    pub fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let v = any(d)?;
        u32::try_from(v).map_err(|_| {
            serde::de::Error::custom(format!("{v} is too large: at most {}", u32::MAX))
        })
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrStr {
    U(u64),
    F(f64),
    S(String),
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumOrStr::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "expected a byte count: a whole number or a string like \"4GiB\"",
            )
        })? {
            NumOrStr::U(v) => Ok(Bytes(v)),
            NumOrStr::F(v) if v < 0.0 => Err(serde::de::Error::custom(format!(
                "{v} is negative: a byte count is 0 or more"
            ))),
            NumOrStr::F(v) => whole(v).map(Bytes).ok_or_else(|| {
                serde::de::Error::custom(format!("{v} is not a whole number of bytes"))
            }),
            NumOrStr::S(s) => parse_bytes(&s).map(Bytes).map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumOrStr::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a percentage: a number or a string like \"50%\"")
        })? {
            NumOrStr::U(v) => Ok(Percent(v as f64)),
            NumOrStr::F(v) => Ok(Percent(v)),
            NumOrStr::S(s) => parse_percent(&s)
                .map(Percent)
                .map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for Percent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.fract() == 0.0 && self.0.abs() < 1e15 {
            s.serialize_u64(self.0 as u64)
        } else {
            s.serialize_f64(self.0)
        }
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_bytes(self.0))
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", (self.0 * 100.0).round() / 100.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12, finding 10 (found by schemathesis): JSON Schema's `integer` accepts `1238500.0`,
    /// and the server refused it ("invalid type: floating point"; bytes said "74973 is not a
    /// whole number"). Whole numbers are whole however they are written.
    #[test]
    fn whole_numbers_written_as_floats_are_accepted() {
        assert_eq!(whole(74973.0), Some(74973));
        assert_eq!(whole(2e3), Some(2000));
        assert_eq!(whole(0.0), Some(0));
        for bad in [0.5, -1.0, f64::NAN, f64::INFINITY, 1.8446744073709552e19] {
            assert_eq!(whole(bad), None, "{bad}");
        }
        let b: Bytes = serde_json::from_str("74973.0").unwrap();
        assert_eq!(b, Bytes(74973));
        let e = serde_json::from_str::<Bytes>("1.5")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a whole number"), "{e}");
        #[derive(Deserialize, Debug)]
        struct T {
            #[serde(default, deserialize_with = "count::u64_opt")]
            n: Option<u64>,
            #[serde(deserialize_with = "count::u32")]
            pid: u32,
        }
        let t: T = serde_json::from_str(r#"{"n": 2097151.0, "pid": 1238500.0}"#).unwrap();
        assert_eq!((t.n, t.pid), (Some(2097151), 1238500));
        let t: T = serde_json::from_str(r#"{"n": null, "pid": 7}"#).unwrap();
        assert_eq!((t.n, t.pid), (None, 7));
        let t: T = serde_json::from_str(r#"{"pid": 7}"#).unwrap();
        assert_eq!(t.n, None);
        for (bad, why) in [
            (r#"{"pid": 1.5}"#, "not a whole number"),
            (r#"{"pid": -3}"#, "negative"),
            (r#"{"pid": 4294967296}"#, "too large"),
            (r#"{"pid": "7"}"#, "expected a whole number"),
            (r#"{"n": -1, "pid": 1}"#, "negative"),
        ] {
            let e = serde_json::from_str::<T>(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn byte_sizes_in_every_unit() {
        let cases = [
            ("0", 0),
            ("4096", 4096),
            ("4GiB", 4 << 30),
            ("4 GiB", 4 << 30),
            ("512M", 512 << 20),
            ("1.5GiB", 3 << 29),
            ("1KB", 1000),
            ("2T", 2 << 40),
        ];
        for (s, want) in cases {
            assert_eq!(parse_bytes(s), Ok(want), "{s}");
        }
    }

    #[test]
    fn bad_byte_sizes_say_why() {
        assert!(parse_bytes("").unwrap_err().contains("not a size"));
        assert!(
            parse_bytes("4 parsecs")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(
            parse_bytes("99999999999999999999TiB")
                .unwrap_err()
                .contains("bad number")
        );
        assert!(
            parse_bytes("16777216TiB")
                .unwrap_err()
                .contains("too large")
        );
        assert!(parse_bytes("-1").is_err());
    }

    #[test]
    fn percentages() {
        assert_eq!(parse_percent("50%"), Ok(50.0));
        assert_eq!(parse_percent(" 12.5 % "), Ok(12.5));
        assert!(parse_percent("half").is_err());
        assert!(parse_percent("NaN").is_err());
    }

    #[test]
    fn serde_accepts_numbers_and_strings_and_writes_numbers() {
        let b: Bytes = serde_json::from_str("\"4GiB\"").unwrap();
        assert_eq!(serde_json::to_string(&b).unwrap(), "4294967296");
        let p: Percent = serde_json::from_str("\"50%\"").unwrap();
        assert_eq!(serde_json::to_string(&p).unwrap(), "50");
        let p: Percent = serde_json::from_str("12.5").unwrap();
        assert_eq!(serde_json::to_string(&p).unwrap(), "12.5");
        assert!(serde_json::from_str::<Bytes>("1.5").is_err());
        assert!(serde_json::from_str::<Bytes>("true").is_err());
    }

    #[test]
    fn human_byte_format() {
        assert_eq!(format_bytes(4 << 30), "4 GiB");
        assert_eq!(format_bytes(1536), "1.50 KiB");
        assert_eq!(format_bytes(12), "12 B");
    }

    proptest::proptest! {
        #[test]
        fn formatted_whole_units_parse_back(n in 0u64..1024, shift in proptest::sample::select(vec![0u32, 10, 20, 30, 40])) {
            let b = n << shift;
            let s = format_bytes(b).replace(' ', "");
            proptest::prop_assert_eq!(parse_bytes(&s), Ok(b));
        }
    }
}
