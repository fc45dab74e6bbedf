//! The S3 server the object storage tests run against, and a fresh bucket
//! for each test.
//!
//! The endpoint is `EDDY_S3_ENDPOINT` (default `http://127.0.0.1:8014`);
//! the credentials and region are `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY` and `AWS_REGION`, defaulting to the ones
//! `scripts/test.sh` starts `s3s-fs` with. Without a server the tests fail,
//! saying how to start one.
//!
//! Also included by the CLI's tests (`tests/checkpoints_s3.rs`).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::signer::{Method, Signer};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

/// How to reach the test server.
pub struct S3 {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_string())
}

impl S3 {
    /// The server, which must answer: panics with how to start it otherwise.
    pub fn server() -> S3 {
        let s3 = S3 {
            endpoint: env_or("EDDY_S3_ENDPOINT", "http://127.0.0.1:8014"),
            access_key: env_or("AWS_ACCESS_KEY_ID", "eddy-test"),
            secret_key: env_or("AWS_SECRET_ACCESS_KEY", "eddy-test-secret"),
            region: env_or("AWS_REGION", "us-east-1"),
        };
        let addr = s3.endpoint.trim_start_matches("http://").trim_end_matches('/').to_string();
        let reachable = addr
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok());
        assert!(
            s3.endpoint.starts_with("http://") && reachable,
            "no S3 server answers at EDDY_S3_ENDPOINT={}. Start one as scripts/test.sh does: \
             `cargo install s3s-fs --version 0.14.1 --features binary --locked`, then \
             `s3s-fs --host 127.0.0.1 --port 8014 --access-key {} --secret-key {} DIR`",
            s3.endpoint,
            s3.access_key,
            s3.secret_key
        );
        s3
    }

    /// The client options for `eddy_checkpoint::Store::open_with`.
    pub fn options(&self) -> Vec<(&'static str, &str)> {
        vec![
            ("aws_endpoint", &self.endpoint),
            ("aws_access_key_id", &self.access_key),
            ("aws_secret_access_key", &self.secret_key),
            ("aws_region", &self.region),
            ("aws_allow_http", "true"),
        ]
    }

    /// The environment a child process (`eddy`) needs to reach the server.
    pub fn env(&self) -> Vec<(&'static str, &str)> {
        vec![
            ("AWS_ENDPOINT_URL", &self.endpoint),
            ("AWS_ACCESS_KEY_ID", &self.access_key),
            ("AWS_SECRET_ACCESS_KEY", &self.secret_key),
            ("AWS_REGION", &self.region),
            ("AWS_ALLOW_HTTP", "true"),
        ]
    }

    /// A client of `bucket`, to look at and damage objects behind a store's back.
    pub fn client(&self, bucket: &str) -> AmazonS3 {
        AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_access_key_id(&self.access_key)
            .with_secret_access_key(&self.secret_key)
            .with_region(&self.region)
            .with_allow_http(true)
            .with_bucket_name(bucket)
            .build()
            .unwrap()
    }

    /// Creates a new, empty bucket named after `test` and returns its name.
    /// object_store cannot create buckets: this sends the `PUT /bucket`
    /// itself, presigned by object_store (SigV4), over a plain socket.
    pub fn bucket(&self, test: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let mut name: String = format!("{test}-{}-{}-{stamp}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
            .collect();
        name = name.trim_start_matches('-').to_string();
        if name.len() > 63 {
            name = name[name.len() - 63..].trim_start_matches('-').to_string();
        }
        let answer = self.bucket_request(Method::PUT, &name);
        assert!(answer.starts_with("HTTP/1.1 200"), "creating bucket {name} at {}: {answer}", self.endpoint);
        name
    }

    /// Sends `METHOD /bucket`, presigned by object_store (SigV4), over a
    /// plain socket; returns the whole answer.
    fn bucket_request(&self, method: Method, bucket: &str) -> String {
        let client = self.client(bucket);
        let url = block_on(client.signed_url(method.clone(), &Key::from(""), Duration::from_secs(300))).unwrap();
        let host = format!("{}:{}", url.host_str().unwrap(), url.port_or_known_default().unwrap());
        let target = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        let mut conn = TcpStream::connect(&host).unwrap();
        write!(conn, "{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        answer
    }
}

/// Runs `f` to completion on a runtime of its own.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

/// The keys of every object of `bucket`, sorted.
pub fn keys(client: &AmazonS3) -> Vec<String> {
    use futures_util::TryStreamExt;
    let mut keys: Vec<String> = block_on(client.list(None).try_collect::<Vec<_>>())
        .unwrap()
        .into_iter()
        .map(|m| m.location.to_string())
        .collect();
    keys.sort();
    keys
}

/// The bytes of object `key`.
pub fn get(client: &AmazonS3, key: &str) -> Vec<u8> {
    block_on(async { client.get(&Key::from(key)).await.unwrap().bytes().await.unwrap().to_vec() })
}

/// Replaces object `key` with `bytes`.
pub fn put(client: &AmazonS3, key: &str, bytes: Vec<u8>) {
    block_on(client.put(&Key::from(key), PutPayload::from(bytes))).unwrap();
}

/// Deletes object `key`.
pub fn delete(client: &AmazonS3, key: &str) {
    block_on(client.delete(&Key::from(key))).unwrap();
}
