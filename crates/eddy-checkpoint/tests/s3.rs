//! What only object storage has: errors that name the URL, the object key
//! and the reason; prefixes that keep stores apart; use from inside a
//! tokio runtime. Against the server of `support/s3.rs`, which must be
//! running.

mod support {
    pub mod s3;
}

use eddy_checkpoint::{Error, Status, Store};
use serde_json::json;
use support::s3::{self, S3};

fn commit(store: &Store, id: u64, payload: &[u8]) {
    let mut p = store.begin(id, id * 10).unwrap();
    p.put("s", payload).unwrap();
    p.commit(json!({ "id": id })).unwrap();
}

#[test]
fn a_missing_bucket_is_named_with_the_url_and_key() {
    let s3 = S3::server();
    let store = Store::open_with("s3://eddy-no-such-bucket/jobs/a", &s3.options()).unwrap();
    assert_eq!(store.location(), "s3://eddy-no-such-bucket/jobs/a");
    let err = store.next_id().unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Object { op: "list", .. }), "{err:?}");
    assert!(
        text.starts_with("s3://eddy-no-such-bucket/jobs/a: list \"jobs/a\" failed") && text.contains("NoSuchBucket"),
        "{text}"
    );
}

#[test]
fn a_refused_connection_and_refused_credentials_are_said() {
    let s3 = S3::server();
    let bucket = s3.bucket("refused");

    // Nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut options = s3.options();
    options[0] = ("aws_endpoint", &endpoint);
    let store = Store::open_with(&format!("s3://{bucket}/p"), &options).unwrap();
    let err = store.load_latest().unwrap_err();
    assert!(err.to_string().to_lowercase().contains("connection refused"), "{err}");
    assert!(err.to_string().starts_with(&format!("s3://{bucket}/p: list \"p\" failed")), "{err}");

    // The right server, a wrong secret.
    let mut options = s3.options();
    options[2] = ("aws_secret_access_key", "not-the-secret");
    let store = Store::open_with(&format!("s3://{bucket}/p"), &options).unwrap();
    let err = store.list().unwrap_err();
    assert!(err.to_string().contains("SignatureDoesNotMatch"), "{err}");
}

#[test]
fn stores_under_other_prefixes_are_apart_and_strays_are_ignored() {
    let s3 = S3::server();
    let bucket = s3.bucket("prefixes");
    let a = Store::open_with(&format!("s3://{bucket}/jobs/a"), &s3.options()).unwrap();
    let ab = Store::open_with(&format!("s3://{bucket}/jobs/ab"), &s3.options()).unwrap();
    let root = Store::open_with(&format!("s3://{bucket}"), &s3.options()).unwrap();
    commit(&a, 1, b"a1");
    commit(&a, 2, b"a2");
    commit(&ab, 7, b"ab7");
    commit(&root, 3, b"root3");
    let client = s3.client(&bucket);
    // Objects that are not PREFIX/<20 digits>/<name> are not checkpoints.
    for stray in ["jobs/a/README", "jobs/a/123/s", "jobs/a/00000000000000000009/deeper/s", "jobs/a0000/x"] {
        s3::put(&client, stray, b"x".to_vec());
    }
    assert_eq!(a.list().unwrap().iter().map(|l| l.id).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(ab.list().unwrap().iter().map(|l| l.id).collect::<Vec<_>>(), [7]);
    assert_eq!(root.list().unwrap().iter().map(|l| l.id).collect::<Vec<_>>(), [3]);
    assert!(matches!(a.list().unwrap()[1].status, Status::Complete(_)));
    assert_eq!(a.load_latest().unwrap().unwrap().file("s").unwrap(), b"a2");
    assert_eq!(a.gc(1).unwrap(), [1]);
    assert_eq!(ab.load_latest().unwrap().unwrap().file("s").unwrap(), b"ab7");
    assert!(s3::keys(&client).contains(&"jobs/a/README".to_string()), "gc leaves what is not the store's");
}

#[test]
fn the_store_works_inside_another_tokio_runtime_and_is_dropped_there() {
    let s3 = S3::server();
    let bucket = s3.bucket("nested");
    let outer = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let store = outer.block_on(async {
        let store = Store::open_with(&format!("s3://{bucket}/p"), &s3.options()).unwrap();
        commit(&store, 1, b"from async code");
        let copy = store.clone();
        drop(store);
        copy
    });
    let loaded = outer.block_on(async move {
        let loaded = store.load_latest().unwrap().unwrap();
        drop(store);
        loaded
    });
    assert_eq!(loaded.file("s").unwrap(), b"from async code");
}
