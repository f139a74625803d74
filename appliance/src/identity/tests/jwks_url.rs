//! The JWK Set fetched from a URL: a loopback server counts the fetches.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::{claims, forge, reason, settings, sign, JWKS};
use crate::identity::{IdentityError, IdpVerifier, JwksSource};

/// A loopback HTTP server that serves a JWK Set (changeable) and counts requests.
struct JwksServer {
    url: String,
    hits: Arc<AtomicUsize>,
    body: Arc<Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(body: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        let hits = Arc::new(AtomicUsize::new(0));
        let body = Arc::new(Mutex::new(body));
        let (h, b) = (hits.clone(), body.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (h, b) = (h.clone(), b.clone());
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    h.fetch_add(1, Ordering::SeqCst);
                    let body = b.lock().unwrap().clone();
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = sock.write_all(head.as_bytes()).await;
                    let _ = sock.write_all(body.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        JwksServer {
            url,
            hits,
            body,
            task,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The test JWK Set with only the keys whose kid is listed.
fn jwks_with(kids: &[&str]) -> String {
    let mut set: Value = serde_json::from_str(JWKS).unwrap();
    set["keys"]
        .as_array_mut()
        .unwrap()
        .retain(|k| kids.contains(&k["kid"].as_str().unwrap()));
    set.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_url_refetches_unknown_kids_at_most_once_per_interval() {
    // Signed up front: RSA signing in a debug build is slow enough to blur the window.
    let rsa_token = sign(Algorithm::RS256, Some("rsa-1"), &claims());
    let ec_token = sign(Algorithm::ES256, Some("ec-1"), &claims());
    let flood: Vec<String> = (0..20)
        .map(|i| sign(Algorithm::EdDSA, Some(&format!("random-{i}")), &claims()))
        .collect();
    let none = forge(&json!({"alg": "none", "kid": "zz"}), &claims(), b"");

    let server = JwksServer::start(jwks_with(&["rsa-1"])).await;
    let window = Duration::from_millis(1000);
    let after_window = window + Duration::from_millis(100);
    let mut s = settings(JwksSource::Url(server.url.clone()));
    s.refresh_min_interval = window;
    let v = Arc::new(IdpVerifier::new(s).unwrap());
    assert_eq!(server.hits(), 0, "no fetch before the first token");

    v.verify(&rsa_token).await.unwrap();
    assert_eq!(server.hits(), 1);
    v.verify(&rsa_token).await.unwrap();
    assert_eq!(server.hits(), 1, "a known kid is served from the cache");

    // After the window, a concurrent flood of random kids causes exactly one refetch.
    tokio::time::sleep(after_window).await;
    let tasks: Vec<_> = flood
        .into_iter()
        .map(|token| {
            let v = v.clone();
            tokio::spawn(async move { v.verify(&token).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(reason(t.await.unwrap()), "signed by an unknown key");
    }
    assert_eq!(server.hits(), 2);

    // A key published now is not looked for again inside the window...
    *server.body.lock().unwrap() = jwks_with(&["rsa-1", "ec-1"]);
    assert_eq!(
        reason(v.verify(&ec_token).await),
        "signed by an unknown key"
    );
    assert_eq!(server.hits(), 2);

    // ...but is found after it. Refused algorithms never reach the network.
    tokio::time::sleep(after_window).await;
    assert_eq!(
        reason(v.verify(&none).await),
        "algorithm none is not accepted"
    );
    assert_eq!(server.hits(), 2);
    v.verify(&ec_token).await.unwrap();
    assert_eq!(server.hits(), 3);
    v.verify(&rsa_token).await.unwrap();
    assert_eq!(server.hits(), 3);
}

#[tokio::test]
async fn jwks_fetch_error_names_the_url() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    drop(listener);
    let v = IdpVerifier::new(settings(JwksSource::Url(url.clone()))).unwrap();
    let token = sign(Algorithm::RS256, Some("rsa-1"), &claims());
    match v.verify(&token).await {
        Err(e @ IdentityError::JwksFetch { .. }) => assert!(e.to_string().contains(&url), "{e}"),
        other => panic!("expected JwksFetch, got {other:?}"),
    }
    // Rate limited: the second attempt does not retry yet, and says why.
    let e = v.verify(&token).await.unwrap_err();
    assert!(
        matches!(e, IdentityError::JwksFetch { .. }) && e.to_string().contains(&url),
        "{e}"
    );
}
