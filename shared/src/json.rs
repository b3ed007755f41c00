//! Strict JSON decoding for request bodies: a wrong type or unknown field becomes a
//! 400 `invalid_request` whose detail names the field, so a client can fix its call.

use serde::de::DeserializeOwned;

use crate::problem::{ErrorCode, Problem};

pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let detail = if path == "." || path.is_empty() {
            format!("request body: {inner}")
        } else {
            format!("field `{path}`: {inner}")
        };
        Problem::new(ErrorCode::InvalidRequest, Some(detail))
    })?;
    Ok(value)
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
    fn rejects_unknown_fields_by_name() {
        let err = from_slice::<CreateOrderRequest>(br#"{"quantity":1,"price":0}"#).unwrap_err();
        assert!(err.detail.unwrap().contains("price"));
    }

    #[test]
    fn rejects_malformed_json() {
        let err = from_slice::<CreateOrderRequest>(b"{quantity:").unwrap_err();
        assert_eq!(err.status, 400);
    }
}
