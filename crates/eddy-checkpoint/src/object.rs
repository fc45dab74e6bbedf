//! Stores on S3-compatible object storage (`s3://bucket/prefix`), through
//! `object_store`.
//!
//! The store's API is synchronous, object_store's is async: every request
//! runs on a current-thread tokio runtime that lives on a thread of its own
//! (`eddy-checkpoint-io`), started by [`Store::open`](crate::Store::open) and
//! stopped when the last clone of the store is dropped. A caller hands the
//! request to that thread and blocks on a plain channel for the answer, so
//! the store may be used from any thread, including one that is itself
//! inside a tokio runtime: nothing here calls `block_on` or
//! `block_in_place` on the caller's thread, and the runtime is dropped on
//! its own thread. (From async code, the call still blocks the calling
//! worker thread while it waits; use `spawn_blocking` there.)

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use futures_util::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::store::{dir_name, parse_dir_name};

/// How often a failed request is retried before its error is returned, and
/// for how long at most: a checkpoint write should ride out a blip, but a
/// wrong endpoint should not take a minute to be reported.
const RETRIES: usize = 5;
const RETRY_TIMEOUT: Duration = Duration::from_secs(60);

/// A store on S3-compatible object storage.
#[derive(Debug)]
pub(crate) struct ObjectBackend {
    /// `s3://bucket/prefix`, as printed in messages.
    url: String,
    /// The key prefix of every object of the store (may be empty).
    prefix: Key,
    client: Arc<AmazonS3>,
    runtime: Runtime,
}

/// The parts of an `s3://bucket/prefix` URL.
pub(crate) fn parse_s3_url(location: &str, rest: &str) -> Result<(String, String)> {
    let invalid = |reason| Error::InvalidLocation { location: location.into(), reason };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(invalid("an s3:// URL needs a bucket (s3://bucket/prefix)"));
    }
    if rest.contains(['?', '#']) {
        return Err(invalid("an s3:// URL takes no query or fragment; configure the client through AWS_* variables"));
    }
    let prefix = prefix.trim_matches('/');
    if prefix.split('/').any(|part| part.is_empty() || part == "." || part == "..") && !prefix.is_empty() {
        return Err(invalid("an s3:// prefix may not hold empty, \".\" or \"..\" segments"));
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

impl ObjectBackend {
    /// Opens `s3://bucket/prefix`: the client is configured from the `AWS_*`
    /// environment variables, then from `options` (object_store's
    /// configuration keys, e.g. `aws_endpoint`), which win. Sends no
    /// request.
    pub(crate) fn open(location: &str, rest: &str, options: &[(&str, &str)]) -> Result<ObjectBackend> {
        let (bucket, prefix) = parse_s3_url(location, rest)?;
        let url = if prefix.is_empty() { format!("s3://{bucket}") } else { format!("s3://{bucket}/{prefix}") };
        let config = |source| Error::ObjectConfig { location: url.clone(), source: Box::new(source) };
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&bucket).with_retry(RetryConfig {
            max_retries: RETRIES,
            retry_timeout: RETRY_TIMEOUT,
            ..RetryConfig::default()
        });
        for (key, value) in options {
            let key = key.to_ascii_lowercase().parse().map_err(config)?;
            builder = builder.with_config(key, *value);
        }
        let client = builder.build().map_err(config)?;
        let prefix = Key::parse(&prefix).map_err(|e| config(e.into()))?;
        let runtime = Runtime::start().map_err(|source| Error::Io { path: url.clone().into(), source })?;
        tracing::debug!(store = %url, "object storage checkpoint store opened");
        Ok(ObjectBackend { url, prefix, client: Arc::new(client), runtime })
    }

    /// `s3://bucket/prefix`.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The key of checkpoint `id`'s object `name`, or of its "directory"
    /// (the prefix of its objects) when `name` is `None`.
    pub(crate) fn key(&self, id: u64, name: Option<&str>) -> Key {
        let dir = self.prefix.clone().join(dir_name(id));
        match name {
            Some(name) => dir.join(name),
            None => dir,
        }
    }

    /// The URL of checkpoint `id`'s object `name` (or of its prefix).
    pub(crate) fn describe(&self, id: u64, name: Option<&str>) -> String {
        let bucket_url = self.url.split('/').take(3).collect::<Vec<_>>().join("/");
        match name {
            Some(_) => format!("{bucket_url}/{}", self.key(id, name)),
            None => format!("{bucket_url}/{}/", self.key(id, None)),
        }
    }

    /// Runs `f` on the store's runtime and waits for it.
    fn run<T, F>(&self, op: &'static str, key: &Key, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = object_store::Result<T>> + Send + 'static,
    {
        match self.runtime.run(f) {
            Some(r) => r.map_err(|source| Error::object(&self.url, op, key, source)),
            None => Err(Error::Io {
                path: self.url.clone().into(),
                source: std::io::Error::other("the checkpoint store's I/O thread has stopped"),
            }),
        }
    }

    /// Every checkpoint under the prefix, oldest first: id, and each object's
    /// name and size. Objects that are not `PREFIX/<20 digits>/<name>` are
    /// not the store's and are passed over.
    pub(crate) fn scan(&self) -> Result<Vec<(u64, BTreeMap<String, u64>)>> {
        let client = Arc::clone(&self.client);
        let prefix = self.prefix.clone();
        let listed = self.run("list", &self.prefix, async move {
            let prefix = (!prefix.as_ref().is_empty()).then_some(&prefix);
            client.list(prefix).try_collect::<Vec<_>>().await
        })?;
        let mut checkpoints: BTreeMap<u64, BTreeMap<String, u64>> = BTreeMap::new();
        for meta in listed {
            let Some(parts) = meta.location.prefix_match(&self.prefix) else { continue };
            let parts: Vec<_> = parts.collect();
            let [dir, name] = parts.as_slice() else { continue };
            let Some(id) = parse_dir_name(dir.as_ref()) else { continue };
            checkpoints.entry(id).or_default().insert(name.as_ref().to_string(), meta.size);
        }
        Ok(checkpoints.into_iter().collect())
    }

    /// The bytes of checkpoint `id`'s object `name`, or `None` if there is
    /// no such object.
    pub(crate) fn read(&self, id: u64, name: &str) -> Result<Option<Vec<u8>>> {
        let client = Arc::clone(&self.client);
        let key = self.key(id, Some(name));
        let k = key.clone();
        self.run("get", &key, async move {
            match client.get(&k).await {
                Ok(got) => Ok(Some(got.bytes().await?.to_vec())),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    /// The bytes of checkpoint `id`'s objects `names`, in that order (`None`
    /// for one that does not exist), fetched concurrently.
    pub(crate) fn read_all(&self, id: u64, names: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        let gets = names.iter().map(|name| {
            let client = Arc::clone(&self.client);
            let key = self.key(id, Some(name));
            async move {
                let got = match client.get(&key).await {
                    Ok(got) => got.bytes().await.map(|b| Some(b.to_vec())),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(e),
                };
                (key, got)
            }
        });
        let all = futures_util::future::join_all(gets);
        let Some(results) = self.runtime.run(all) else {
            return Err(Error::Io {
                path: self.url.clone().into(),
                source: std::io::Error::other("the checkpoint store's I/O thread has stopped"),
            });
        };
        results.into_iter().map(|(key, got)| got.map_err(|e| Error::object(&self.url, "get", &key, e))).collect()
    }

    /// Writes checkpoint `id`'s object `name`: one PUT, so that the object
    /// appears whole or not at all.
    pub(crate) fn write(&self, id: u64, name: &str, bytes: Vec<u8>) -> Result<()> {
        let client = Arc::clone(&self.client);
        let key = self.key(id, Some(name));
        let k = key.clone();
        self.run("put", &key, async move { client.put(&k, PutPayload::from(bytes)).await.map(drop) })
    }

    /// Deletes checkpoint `id`'s objects `names`, in that order.
    pub(crate) fn delete(&self, id: u64, names: Vec<String>) -> Result<()> {
        for name in names {
            let client = Arc::clone(&self.client);
            let key = self.key(id, Some(&name));
            let k = key.clone();
            self.run("delete", &key, async move {
                match client.delete(&k).await {
                    Err(object_store::Error::NotFound { .. }) => Ok(()),
                    r => r,
                }
            })?;
        }
        Ok(())
    }
}

/// A current-thread tokio runtime on a thread of its own; dropping this
/// stops it (the thread drops the runtime and ends).
#[derive(Debug)]
struct Runtime {
    handle: tokio::runtime::Handle,
    _stop: oneshot::Sender<()>,
}

impl Runtime {
    fn start() -> std::io::Result<Runtime> {
        let (started_tx, started_rx) = mpsc::sync_channel(1);
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new().name("eddy-checkpoint-io".into()).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = started_tx.send(Err(e));
                    return;
                }
            };
            let _ = started_tx.send(Ok(runtime.handle().clone()));
            // Drives the requests spawned onto it until the store is dropped.
            runtime.block_on(async {
                let _ = stopped.await;
            });
        })?;
        let handle = started_rx
            .recv()
            .map_err(|_| std::io::Error::other("the checkpoint store's I/O thread ended at its start"))??;
        Ok(Runtime { handle, _stop: stop })
    }

    /// Runs `f` on the runtime's thread and blocks the calling thread (not a
    /// runtime) until it is done; `None` if the runtime has stopped.
    fn run<F>(&self, f: F) -> Option<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<(String, String)> {
        parse_s3_url(url, url.strip_prefix("s3://").unwrap())
    }

    #[test]
    fn urls() {
        assert_eq!(parse("s3://b").unwrap(), ("b".into(), "".into()));
        assert_eq!(parse("s3://b/").unwrap(), ("b".into(), "".into()));
        assert_eq!(parse("s3://b/ckpt/job-1/").unwrap(), ("b".into(), "ckpt/job-1".into()));
        for bad in ["s3://", "s3:///p", "s3://b/a//c", "s3://b/a/../c", "s3://b/p?region=x"] {
            assert!(matches!(parse(bad), Err(Error::InvalidLocation { .. })), "{bad}");
        }
    }

    #[test]
    fn keys_and_descriptions() {
        let opts = [("aws_access_key_id", "k"), ("aws_secret_access_key", "s"), ("aws_endpoint", "http://127.0.0.1:1")];
        let b = ObjectBackend::open("s3://bkt/a/b", "bkt/a/b", &opts).unwrap();
        assert_eq!(b.url(), "s3://bkt/a/b");
        assert_eq!(b.key(7, Some("w0.s")).as_ref(), "a/b/00000000000000000007/w0.s");
        assert_eq!(b.describe(7, Some("w0.s")), "s3://bkt/a/b/00000000000000000007/w0.s");
        assert_eq!(b.describe(7, None), "s3://bkt/a/b/00000000000000000007/");
        let root = ObjectBackend::open("s3://bkt", "bkt", &opts).unwrap();
        assert_eq!(root.key(1, Some("m")).as_ref(), "00000000000000000001/m");
        assert_eq!(root.describe(1, Some("m")), "s3://bkt/00000000000000000001/m");
    }

    #[test]
    fn runs_from_inside_another_runtime_and_drops_there() {
        let outer = tokio::runtime::Builder::new_current_thread().build().unwrap();
        outer.block_on(async {
            let rt = Runtime::start().unwrap();
            assert_eq!(rt.run(async { 6 * 7 }), Some(42));
            drop(rt);
        });
    }
}
