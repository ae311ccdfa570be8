//! Sustained ingest for the durability tests: concurrent senders, each an agent of its
//! own, posting batches whose events carry unique ids. A batch that is not answered 200
//! (503, a dead controller, a timeout) is sent again unchanged, to the next address when
//! there are several (replicas), as an agent would. Every id acknowledged with 200 is kept,
//! so a test can check that each one is in the sink.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Running senders.
pub struct Ingest {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    /// Batches answered 200 so far.
    pub batches_acked: Arc<AtomicU64>,
    /// Attempts that were not a 200 (and were retried).
    pub retries: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
}

/// A batch of `n` events with ids `<prefix>-<i>`.
pub fn id_batch(agent: &str, seq: u64, prefix: &str, n: usize) -> (Vec<u8>, Vec<String>) {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let events: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            json!({"id": id, "type": "kernel.network.connection_refused", "observer": "network",
                   "severity": "warning", "outcome": "failure",
                   "error": {"code": "ECONNREFUSED", "message": "refused"},
                   "timestamp_unix_nanos": 1_763_700_000_000_000_000u64 + i as u64,
                   "facts": {"pid": 100 + i, "comm": "curl", "dst_addr": "127.0.0.1", "dst_port": 1}})
        })
        .collect();
    let body = json!({"wire_version": "tapio-wire/v1", "agent_id": agent, "node_name": format!("node-{agent}"),
                      "sequence": seq, "sent_at_unix_nanos": 1u64, "events": events});
    (body.to_string().into_bytes(), ids)
}

/// POSTs `/v1/events`; the status, or None when the controller could not be reached or
/// did not answer within 15 s.
pub async fn try_post(addr: SocketAddr, body: &[u8]) -> Option<u16> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let head = format!(
            "POST /v1/events HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.ok()?;
        s.write_all(body).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let line = buf.split(|b| *b == b'\r').next()?;
        std::str::from_utf8(line).ok()?.split(' ').nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(15), exchange).await.ok().flatten()
}

impl Ingest {
    /// Starts `senders` senders posting `batch_events`-event batches to `addrs`.
    pub fn start(addrs: Vec<SocketAddr>, tag: &str, senders: usize, batch_events: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let batches_acked = Arc::new(AtomicU64::new(0));
        let retries = Arc::new(AtomicU64::new(0));
        let tasks = (0..senders)
            .map(|s| {
                let (stop, acked, batches_acked, retries) =
                    (Arc::clone(&stop), Arc::clone(&acked), Arc::clone(&batches_acked), Arc::clone(&retries));
                let addrs = addrs.clone();
                let agent = format!("{tag}-agent-{s}");
                tokio::spawn(async move {
                    let mut target = s;
                    for seq in 1u64.. {
                        let (body, ids) = id_batch(&agent, seq, &format!("{agent}-{seq}"), batch_events);
                        // Retry the same batch until it is acknowledged or the test stops.
                        loop {
                            if stop.load(Ordering::Acquire) {
                                return;
                            }
                            let addr = addrs[target % addrs.len()];
                            if try_post(addr, &body).await == Some(200) {
                                acked.lock().unwrap().extend(ids);
                                batches_acked.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            retries.fetch_add(1, Ordering::Relaxed);
                            target += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                })
            })
            .collect();
        Self { stop, acked, batches_acked, retries, tasks }
    }

    /// Ids acknowledged so far.
    pub fn acked_now(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Stops the senders (a batch in flight is abandoned, as by an agent that stops) and
    /// returns every acknowledged id.
    pub async fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Release);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(20), t).await;
        }
        let ids = self.acked.lock().unwrap().clone();
        ids
    }
}

/// Every acknowledged id must be among `stored`; returns how many stored ids were
/// duplicates (allowed: a batch retried after its answer was lost).
pub fn check_all_kept(acked: &[String], stored: &[String]) -> usize {
    let set: std::collections::HashSet<&str> = stored.iter().map(String::as_str).collect();
    let missing: Vec<&String> = acked.iter().filter(|id| !set.contains(id.as_str())).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events are not in the sink, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    stored.len() - set.len()
}
