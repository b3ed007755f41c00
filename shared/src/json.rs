//! Strict JSON decoding for request bodies: a wrong type or unknown field becomes a
//! 400 `invalid_request` whose detail names the field, so a client can fix its call.
//! So does a string holding U+0000, which no text column can store. A number
//! written with a fraction of zero (`2.0`, `1e3`) is the integer it equals, as JSON
//! Schema counts it.

use serde::de::DeserializeOwned;

use crate::problem::{ErrorCode, Problem};

fn refusal(path: String, inner: impl std::fmt::Display) -> Problem {
    let detail = if path == "." || path.is_empty() {
        format!("request body: {inner}")
    } else {
        format!("field `{path}`: {inner}")
    };
    Problem::new(ErrorCode::InvalidRequest, Some(detail))
}

pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = match serde_path_to_error::deserialize(de) {
        Ok(value) => value,
        // Rare: read it again with whole floats as integers.
        Err(err) if err.inner().to_string().starts_with("invalid type: floating point") => {
            let mut tree: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| refusal(String::new(), e))?;
            whole_floats_as_integers(&mut tree);
            serde_path_to_error::deserialize(tree).map_err(|err| refusal(err.path().to_string(), err.into_inner()))?
        }
        Err(err) => return Err(refusal(err.path().to_string(), err.into_inner())),
    };
    // Only an escaped NUL can be one (JSON has no raw control characters in strings).
    if bytes.windows(6).any(|w| w.eq_ignore_ascii_case(b"\\u0000")) {
        let tree: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
        if let Some(path) = nul_at(&tree, String::new()) {
            let field = if path.is_empty() { "request body".to_owned() } else { format!("field `{path}`") };
            return Err(Problem::new(ErrorCode::InvalidRequest, Some(format!("{field}: must not contain U+0000"))));
        }
    }
    Ok(value)
}

fn whole_floats_as_integers(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            // Within 2^53 every whole float is exactly its integer.
            if f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0 {
                *value = Value::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(whole_floats_as_integers),
        Value::Object(map) => map.values_mut().for_each(whole_floats_as_integers),
        _ => {}
    }
}

/// Where the first string (or key) holding U+0000 is, as a dotted path.
fn nul_at(value: &serde_json::Value, path: String) -> Option<String> {
    let join = |key: &str| if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") };
    match value {
        serde_json::Value::String(s) if s.contains('\0') => Some(path),
        serde_json::Value::Array(items) => items.iter().enumerate().find_map(|(i, v)| nul_at(v, join(&i.to_string()))),
        serde_json::Value::Object(map) => map.iter().find_map(|(k, v)| {
            if k.contains('\0') {
                Some(join(&k.replace('\0', "\\u0000")))
            } else {
                nul_at(v, join(k))
            }
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::CreateOrderRequest;

    #[test]
    fn names_the_field_of_wrong_type() {
        let err = from_slice::<CreateOrderRequest>(br#"{"quantity":"1"}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidRequest);
        assert!(err.detail.unwrap().contains("quantity"));
    }

    #[test]
    fn a_whole_float_is_its_integer_and_a_fraction_is_refused_by_name() {
        assert_eq!(from_slice::<CreateOrderRequest>(br#"{"quantity":2.0}"#).unwrap().quantity, 2);
        assert_eq!(from_slice::<CreateOrderRequest>(br#"{"quantity":3e0}"#).unwrap().quantity, 3);
        let err = from_slice::<CreateOrderRequest>(br#"{"quantity":2.5}"#).unwrap_err();
        assert!(err.detail.unwrap().contains("quantity"));
        let err = from_slice::<CreateOrderRequest>(br#"{"quantity":-1.0}"#).unwrap_err();
        assert!(err.detail.unwrap().contains("quantity"));
    }

    #[test]
    fn rejects_unknown_fields_by_name() {
        let err = from_slice::<CreateOrderRequest>(br#"{"quantity":1,"price":0}"#).unwrap_err();
        assert!(err.detail.unwrap().contains("price"));
    }

    #[test]
    fn a_nul_in_any_string_is_refused_by_name() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Named {
            name: String,
            tags: Vec<String>,
        }
        let err = from_slice::<Named>(br#"{"name":"a\u0000b","tags":[]}"#).unwrap_err();
        assert_eq!(err.detail.as_deref(), Some("field `name`: must not contain U+0000"));
        let err = from_slice::<Named>(br#"{"name":"ok","tags":["x","\u0000"]}"#).unwrap_err();
        assert_eq!(err.detail.as_deref(), Some("field `tags.1`: must not contain U+0000"));
        assert!(from_slice::<Named>(br#"{"name":"\\u0000 is text here","tags":[]}"#).is_ok(), "an escaped backslash");
    }

    #[test]
    fn rejects_malformed_json() {
        let err = from_slice::<CreateOrderRequest>(b"{quantity:").unwrap_err();
        assert_eq!(err.status, 400);
    }
}
