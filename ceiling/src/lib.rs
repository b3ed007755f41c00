//! The ceilings the bench measures the edge against, under the same `wrangler dev`:
//! - `GET /fixed`: a fixed JSON body, no binding touched (the request ceiling);
//! - `POST /write`: one Durable Object doing one SQLite write per request (the
//!   write ceiling of one inventory object).
//!
//! `/fixed` carries `x-dev-wasm-memory-bytes` (the isolate's wasm memory), as the
//! edge's `/healthz` does in development: the soak's baseline for it.
//!
//! Not deployed: `ceiling/wrangler.toml` exists for the bench only.
//!
//! `GET /memory` says how large the instance's wasm memory has grown
//! (`x-dev-wasm-memory-bytes`) and when the instance started
//! (`x-dev-instance-started-ms`), as the edge's `/healthz` does in development, so
//! the burst bench can hold both Workers to the same measure.

use worker::{durable_object, event, Context, Env, Method, Request, Response, Result, SqlStorageValue, State};

thread_local! {
    static STARTED_MS: std::cell::OnceCell<f64> = const { std::cell::OnceCell::new() };
}

fn wasm_memory_bytes() -> usize {
    #[cfg(target_arch = "wasm32")]
    {
        core::arch::wasm32::memory_size(0) * 65_536
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        0
    }
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    let started = STARTED_MS.with(|s| *s.get_or_init(|| worker::Date::now().as_millis() as f64));
    match (req.method(), req.path().as_str()) {
        (Method::Get, "/memory") => {
            let mut resp = Response::empty()?;
            resp.headers_mut().set("x-dev-wasm-memory-bytes", &wasm_memory_bytes().to_string())?;
            resp.headers_mut().set("x-dev-instance-started-ms", &started.to_string())?;
            Ok(resp)
        }
        (Method::Get, "/fixed") => {
            let mut resp = Response::from_json(&serde_json::json!({"status": "live", "remaining": 0}))?;
            // The soak compares the edge's wasm memory with this baseline's.
            resp.headers_mut().set("x-dev-wasm-memory-bytes", &wasm_memory_bytes().to_string())?;
            Ok(resp)
        }
        (Method::Post, "/write") => {
            let stub = env.durable_object("WRITER")?.id_from_name("one")?.get_stub()?;
            stub.fetch_with_request(req).await
        }
        _ => Response::error("not found", 404),
    }
}

#[durable_object]
pub struct Writer {
    state: State,
}

impl worker::DurableObject for Writer {
    fn new(state: State, _env: Env) -> Self {
        let created = state.storage().sql().exec(
            "CREATE TABLE IF NOT EXISTS writes (id INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL)",
            None,
        );
        if let Err(e) = created {
            worker::console_error!("writer table: {e}");
        }
        Self { state }
    }

    async fn fetch(&self, _req: Request) -> Result<Response> {
        let at = SqlStorageValue::Integer(worker::Date::now().as_millis() as i64);
        self.state.storage().sql().exec("INSERT INTO writes (at) VALUES (?)", vec![at])?;
        Response::from_json(&serde_json::json!({"written": true}))
    }
}
