//! The ceiling of `benches/cache.sh`: a bare hyper server that answers every request with one
//! fixed JSON body of about the size of a vendor `offline_msg_count` answer. No routing, no
//! authentication, no cache lookup: what any Rust gateway built on hyper and tokio could at best
//! reach on this machine.
//!
//! HTTP/1.1 with keep-alive on tokio's multi-threaded runtime (one worker per core), TCP_NODELAY
//! on accepted sockets as imgate does. It serves only when given an address:
//!
//! ```sh
//! cargo build --release --bench ceiling
//! target/release/deps/ceiling-<hash> 127.0.0.1:28184     # or CEILING_LISTEN=127.0.0.1:28184
//! ```
//!
//! Without one (as under `cargo bench`, which passes `--bench`) it prints how to use it and exits
//! with 0, so that `cargo bench` and `cargo test --all-targets` never start a server.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Shaped like the vendor's answer to `GET …/users/{u}/offline_msg_count` (about 200 bytes).
const BODY: &str = concat!(
    r#"{"action":"get","uri":"http://127.0.0.1/app-id/a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6/users/"#,
    r#"bench-user/offline_msg_count","entities":[],"data":{"bench-user":0},"#,
    r#""timestamp":1700000000000,"duration":0,"count":0}"#,
);

fn listen_addr() -> Option<SocketAddr> {
    let arg = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let raw = arg.or_else(|| std::env::var("CEILING_LISTEN").ok())?;
    match raw.parse() {
        Ok(addr) => Some(addr),
        Err(err) => {
            eprintln!("ceiling: bad listen address {raw:?}: {err}");
            std::process::exit(2);
        }
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let Some(addr) = listen_addr() else {
        eprintln!(
            "ceiling: a fixed-body hyper server for benches/cache.sh; \
             run it with ADDR as argument or CEILING_LISTEN=ADDR"
        );
        return Ok(());
    };
    let listener = TcpListener::bind(addr).await?;
    let body = Bytes::from_static(BODY.as_bytes());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(pair) => pair,
            Err(err) => {
                eprintln!("ceiling: accept failed: {err}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let service = service_fn(move |_req: Request<hyper::body::Incoming>| {
                let mut resp = Response::new(Full::new(body.clone()));
                resp.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
