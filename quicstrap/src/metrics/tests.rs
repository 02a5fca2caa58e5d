//! Unit tests of the registry's rendering and of the endpoint.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;

use super::*;

#[test]
fn renders_the_text_format() {
    let r = Registry::new();
    let n = Arc::new(AtomicU64::new(7));
    let m = n.clone();
    r.register(
        "qs_bytes_sent_total",
        "Payload bytes sent.",
        Kind::Counter,
        &[],
        move || m.load(Ordering::Relaxed) as f64,
    );
    r.register(
        "qs_transfers_total",
        "Transfers by outcome.",
        Kind::Counter,
        &[("outcome", "ok")],
        || 3.0,
    );
    r.register(
        "qs_transfers_total",
        "Transfers by outcome.",
        Kind::Counter,
        &[("outcome", "busy")],
        || 1.0,
    );
    n.store(9, Ordering::Relaxed);
    let text = r.render();
    assert_eq!(
        text,
        "# HELP qs_bytes_sent_total Payload bytes sent.\n\
         # TYPE qs_bytes_sent_total counter\n\
         qs_bytes_sent_total 9\n\
         # HELP qs_transfers_total Transfers by outcome.\n\
         # TYPE qs_transfers_total counter\n\
         qs_transfers_total{outcome=\"ok\"} 3\n\
         qs_transfers_total{outcome=\"busy\"} 1\n"
    );
}

#[tokio::test]
async fn the_endpoint_serves_it() {
    let r = Registry::new();
    r.register("qs_up", "Always 1.", Kind::Gauge, &[], || 1.0);
    let (addr, task) = serve("127.0.0.1:0".parse().unwrap(), r).await.unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = sender
        .send_request(
            Request::get("/metrics")
                .header("host", "x")
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("qs_up 1\n"));
    task.abort();
}
