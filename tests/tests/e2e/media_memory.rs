//! The Worker's memory under uploads (issue 22): an isolate has 128 MB, and one
//! that outgrows it is restarted. Uploads stream into R2, so ten 10 MiB files
//! arriving at once must leave the Worker's wasm memory far below that.
//!
//! The edge, in development only, says on `/healthz` how large its wasm linear
//! memory has grown (`x-dev-wasm-memory-bytes`). Linear memory never shrinks: the
//! figure after the uploads is the most the Worker held at any one time.

use drops_shared::auth::Role;
use drops_shared::media::{MediaKey, MAX_MEDIA_BYTES};
use std::time::Duration;

use drops_tests::client::{client_address, token};
use drops_tests::files::png_of_size;
use drops_tests::Stack;
use futures::future::join_all;
use reqwest::StatusCode;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::media::{raw_upload, Framing};

/// A quarter of the isolate's 128 MB: what ten 10 MiB uploads of declared length
/// may grow the Worker's memory to. Buffered whole, they took it to 91.9 MiB.
const CEILING_BYTES: usize = 32 * 1024 * 1024;
/// Half of it: what ten chunked ones may (each holds one 5 MiB part of its
/// multipart upload at a time).
const CHUNKED_CEILING_BYTES: usize = 64 * 1024 * 1024;

const MIB: f64 = 1024.0 * 1024.0;

async fn wasm_memory(client: &drops_tests::Client) -> usize {
    let health = client.get("/healthz", None).await;
    assert_eq!(health.status, StatusCode::OK);
    health
        .header("x-dev-wasm-memory-bytes")
        .and_then(|v| v.parse().ok())
        .expect("the development edge reports its wasm memory on /healthz")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_concurrent_10_mib_uploads_leave_the_worker_far_under_its_memory_limit() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let before = wasm_memory(&client).await;
    let files: Vec<Vec<u8>> = (0..10).map(|_| png_of_size(MAX_MEDIA_BYTES)).collect();
    let answers = join_all(files.iter().map(|file| {
        // Each from a creator and an address of its own (the edge limits writes per user).
        let req = client
            .http
            .post(format!("{}/v1/media", client.edge))
            .header("content-type", "image/png")
            .header("cf-connecting-ip", client_address(Uuid::new_v4()))
            .bearer_auth(token(Uuid::now_v7(), Role::Creator))
            .body(file.clone());
        client.send_upload(req)
    }))
    .await;
    let after = wasm_memory(&client).await;
    println!(
        "the Worker's wasm memory: {:.1} MiB before, {:.1} MiB after ten concurrent 10 MiB uploads",
        before as f64 / MIB,
        after as f64 / MIB
    );
    for (file, answer) in files.iter().zip(&answers) {
        assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.json());
        let key = MediaKey::of(file).expect("a PNG");
        assert_eq!(answer.json()["key"], key.to_string());
        let served = client.get(&key.public_path(), None).await;
        assert_eq!(served.status, StatusCode::OK);
        assert!(Sha256::digest(&served.body)[..] == Sha256::digest(file)[..], "the bytes served are those uploaded");
    }
    assert!(
        after < CEILING_BYTES,
        "ten 10 MiB uploads grew the Worker's wasm memory to {:.1} MiB (at most {:.0} MiB)",
        after as f64 / MIB,
        CEILING_BYTES as f64 / MIB
    );

    // Then chunked (no declared length): multipart uploads, one part held at a time.
    let files: Vec<Vec<u8>> = (0..10).map(|_| png_of_size(MAX_MEDIA_BYTES)).collect();
    let answers = join_all(files.iter().map(|file| {
        let who = token(Uuid::now_v7(), Role::Creator);
        let edge = client.edge.clone();
        async move { raw_upload(&edge, &who, Framing::Chunked, file.clone(), Duration::from_secs(120)).await }
    }))
    .await;
    let chunked = wasm_memory(&client).await;
    println!("and {:.1} MiB after ten concurrent chunked 10 MiB uploads", chunked as f64 / MIB);
    for (file, answer) in files.iter().zip(answers) {
        let answer = answer.expect("an answer to a chunked upload");
        assert_eq!(answer.status, 201, "{}", String::from_utf8_lossy(&answer.body));
        let served = client.get(&MediaKey::of(file).expect("a PNG").public_path(), None).await;
        assert!(
            Sha256::digest(&served.body)[..] == Sha256::digest(file)[..],
            "the chunked bytes served are those uploaded"
        );
    }
    assert!(
        chunked < CHUNKED_CEILING_BYTES,
        "ten chunked 10 MiB uploads grew the Worker's wasm memory to {:.1} MiB (at most {:.0} MiB)",
        chunked as f64 / MIB,
        CHUNKED_CEILING_BYTES as f64 / MIB
    );
}
