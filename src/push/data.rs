//! Whether a push's `data` can be carried on every path exactly as pushed.

/// Checks that a push's `data` can be carried on every path as pushed: nested at most
/// `max_depth` deep (clients and JSON libraries have recursion limits), numbers that fit
/// a double (JavaScript would read `1e999999` as `Infinity`), strings of valid Unicode
/// (no lone surrogate escapes such as `"\ud800"`).
pub fn check_data(json: &str, max_depth: usize) -> Result<(), String> {
    if plainly_fine(json.as_bytes(), max_depth) {
        return Ok(());
    }
    check_data_fully(json, max_depth)
}

/// A scan that settles the common case without parsing: no escapes in strings (so no
/// lone surrogate), no exponents and no runs of more than 15 digits outside them (so
/// every number fits a double), nesting within the limit. Anything else gets the full
/// check. The JSON is already known to
/// be well formed (it was parsed as part of the push).
pub(super) fn plainly_fine(json: &[u8], max_depth: usize) -> bool {
    let (mut depth, mut in_string, mut digits) = (0usize, false, 0usize);
    for &b in json {
        if in_string {
            match b {
                b'\\' => return false,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            // An exponent (after a digit; the `e` of `true` and `false` is none).
            b'e' | b'E' if digits > 0 => return false,
            b'0'..=b'9' => {
                digits += 1;
                if digits > 15 {
                    return false;
                }
                continue;
            }
            _ => {}
        }
        digits = 0;
    }
    true
}

fn check_data_fully(json: &str, max_depth: usize) -> Result<(), String> {
    use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};

    struct Level(usize);

    impl<'de> DeserializeSeed<'de> for Level {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Level {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
            if v.is_finite() {
                Ok(())
            } else {
                Err(E::custom("number out of range"))
            }
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let inner = self.deeper::<A::Error>()?;
            while seq.next_element_seed(Level(inner))?.is_some() {}
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let inner = self.deeper::<A::Error>()?;
            while map.next_key_seed(Level(inner))?.is_some() {
                map.next_value_seed(Level(inner))?;
            }
            Ok(())
        }
    }

    impl Level {
        fn deeper<E: serde::de::Error>(&self) -> Result<usize, E> {
            self.0.checked_sub(1).ok_or_else(|| E::custom(DEEP))
        }
    }

    const DEEP: &str = "nested too deep";
    let mut de = serde_json::Deserializer::from_str(json);
    let checked = Level(max_depth)
        .deserialize(&mut de)
        .and_then(|()| de.end());
    checked.map_err(|e| {
        let detail = e.to_string();
        if detail.starts_with(DEEP) {
            format!("data nests arrays and objects deeper than {max_depth} levels (api.max_data_depth)")
        } else if detail.contains("surrogate") || detail.contains("hex escape") {
            format!(
                "data holds a lone UTF-16 surrogate escape such as \\ud800, which is not Unicode text: {detail}"
            )
        } else if detail.contains("out of range") {
            format!(
                "data holds a number out of range of a double (JavaScript would read it as Infinity): {detail}"
            )
        } else {
            format!("data is not valid JSON: {detail}")
        }
    })
}

/// Writes `json` to `out` in one canonical form: no whitespace, object keys sorted (the
/// last of duplicate keys kept, as parsers do), strings re-escaped one way, and numbers
/// exactly as written (never through a float, so `0.1000000000000000000001` and
/// `0.1000000000000000000009` stay different).
pub(super) fn canonical(json: &str, out: &mut String) -> Result<(), serde_json::Error> {
    use serde_json::value::RawValue;
    let json = json.trim();
    match json.as_bytes().first() {
        Some(b'{') => {
            let map: std::collections::BTreeMap<String, Box<RawValue>> =
                serde_json::from_str(json)?;
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(k)?);
                out.push(':');
                canonical(v.get(), out)?;
            }
            out.push('}');
        }
        Some(b'[') => {
            let items: Vec<Box<RawValue>> = serde_json::from_str(json)?;
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(v.get(), out)?;
            }
            out.push(']');
        }
        Some(b'"') => {
            let s: String = serde_json::from_str(json)?;
            out.push_str(&serde_json::to_string(&s)?);
        }
        _ => out.push_str(json),
    }
    Ok(())
}
