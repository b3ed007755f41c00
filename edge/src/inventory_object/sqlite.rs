//! Small helpers for the inventory object's SQLite storage.

use serde::Deserialize;
use worker::SqlStorageValue;

pub fn text(v: impl ToString) -> SqlStorageValue {
    SqlStorageValue::String(v.to_string())
}

pub fn int(v: i64) -> SqlStorageValue {
    SqlStorageValue::Integer(v)
}

/// The row of a `SELECT MIN(...) AS t` (SQLite numbers arrive as floats).
#[derive(Deserialize)]
pub struct MinRow {
    pub t: Option<f64>,
}
