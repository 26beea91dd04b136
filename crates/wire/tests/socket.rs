//! Server and client halves talking over a real Unix socket.

use portico_wire::{Backoff, SnapshotClient, SnapshotServer, SnapshotSink, DEFAULT_MAX_FRAME};
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Applies anything except payloads equal to `b"bad"`, deltas included, and records
/// which versions came as deltas.
#[derive(Default)]
struct RecordingSink {
    applied: Mutex<Vec<(u64, Vec<u8>)>>,
    deltas: Mutex<Vec<u64>>,
}

impl SnapshotSink for RecordingSink {
    fn last_applied(&self) -> u64 {
        self.applied.lock().unwrap().last().map_or(0, |(v, _)| *v)
    }
    fn apply(&self, version: u64, payload: Vec<u8>) -> Result<(), String> {
        if payload == b"bad" {
            return Err("payload is bad".into());
        }
        self.applied.lock().unwrap().push((version, payload));
        Ok(())
    }
    fn apply_delta(&self, base_version: u64, version: u64, payload: Vec<u8>) -> Result<(), String> {
        assert_eq!(
            base_version,
            self.last_applied(),
            "the client checks the base before applying"
        );
        self.apply(version, payload)?;
        self.deltas.lock().unwrap().push(version);
        Ok(())
    }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

fn client(path: &std::path::Path, id: &str) -> SnapshotClient {
    let mut c = SnapshotClient::new(path.to_path_buf(), id.to_string());
    c.backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(50));
    c
}

#[tokio::test]
async fn proxies_get_latest_on_connect_then_every_newer_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portico.sock");
    let (server, publisher) = SnapshotServer::bind(&path, DEFAULT_MAX_FRAME).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let acked = server.acked_versions();
    tokio::spawn(server.serve());
    publisher.publish(1, b"one".to_vec());

    let sinks: Vec<&'static RecordingSink> = (0..2).map(|_| &*Box::leak(Box::default())).collect();
    for (i, sink) in sinks.iter().enumerate() {
        let c = client(&path, &format!("proxy-{i}"));
        let sink: &'static RecordingSink = sink;
        tokio::spawn(async move { c.run(sink).await });
    }
    eventually("both proxies ack version 1", || {
        acked.get("proxy-0") == Some(1) && acked.get("proxy-1") == Some(1)
    })
    .await;

    publisher.publish(2, b"bad".to_vec());
    publisher.publish(3, b"three".to_vec());
    eventually("both proxies ack version 3", || {
        acked.get("proxy-0") == Some(3) && acked.get("proxy-1") == Some(3)
    })
    .await;
    for sink in &sinks {
        let applied = sink.applied.lock().unwrap().clone();
        assert_eq!(applied.first(), Some(&(1, b"one".to_vec())));
        assert_eq!(applied.last(), Some(&(3, b"three".to_vec())));
        assert!(
            applied.iter().all(|(_, p)| p != b"bad"),
            "a refused snapshot was applied"
        );
    }
}

#[tokio::test]
async fn refused_snapshot_keeps_the_last_good_one_and_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let (server, publisher) = SnapshotServer::bind(&path, DEFAULT_MAX_FRAME).unwrap();
    let acked = server.acked_versions();
    tokio::spawn(server.serve());
    let sink: &'static RecordingSink = Box::leak(Box::default());
    let c = client(&path, "p");
    tokio::spawn(async move { c.run(sink).await });

    publisher.publish(10, b"good".to_vec());
    eventually("ack 10", || acked.get("p") == Some(10)).await;
    publisher.publish(11, b"bad".to_vec());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(sink.last_applied(), 10);
    assert_eq!(acked.get("p"), Some(10), "a Nack must not count as applied");
    publisher.publish(12, b"fine".to_vec());
    eventually("ack 12", || acked.get("p") == Some(12)).await;
}

#[tokio::test]
async fn a_deleted_socket_file_is_bound_again_and_new_proxies_reach_the_controller() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.sock");
    let (server, publisher) = SnapshotServer::bind(&path, DEFAULT_MAX_FRAME).unwrap();
    let acked = server.acked_versions();
    tokio::spawn(server.serve());
    publisher.publish(1, b"one".to_vec());

    std::fs::remove_file(&path).unwrap();
    eventually("the socket file is back", || path.exists()).await;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let sink: &'static RecordingSink = Box::leak(Box::default());
    let c = client(&path, "late");
    tokio::spawn(async move { c.run(sink).await });
    eventually("the late proxy acks 1", || acked.get("late") == Some(1)).await;
}

#[tokio::test]
async fn client_reconnects_after_the_controller_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.sock");
    let (server, publisher) = SnapshotServer::bind(&path, DEFAULT_MAX_FRAME).unwrap();
    let first = tokio::spawn(server.serve());
    let sink: &'static RecordingSink = Box::leak(Box::default());
    let c = client(&path, "p");
    tokio::spawn(async move { c.run(sink).await });
    publisher.publish(1, b"a".to_vec());
    eventually("applied 1", || sink.last_applied() == 1).await;

    first.abort();
    drop(publisher);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The old socket file is stale now; binding again must replace it.
    let (server, publisher) = SnapshotServer::bind(&path, DEFAULT_MAX_FRAME).unwrap();
    tokio::spawn(server.serve());
    publisher.publish(2, b"b".to_vec());
    eventually("applied 2 after reconnect", || sink.last_applied() == 2).await;
}

#[tokio::test]
async fn oversized_snapshot_is_refused_by_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.sock");
    let (server, publisher) = SnapshotServer::bind(&path, DEFAULT_MAX_FRAME).unwrap();
    tokio::spawn(server.serve());
    let sink: &'static RecordingSink = Box::leak(Box::default());
    let mut c = client(&path, "p");
    c.max_frame = 1024;
    tokio::spawn(async move { c.run(sink).await });
    publisher.publish(1, vec![b'x'; 4096]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sink.last_applied(), 0);
    publisher.publish(2, b"small".to_vec());
    eventually("small snapshot applied after the refusal", || {
        sink.last_applied() == 2
    })
    .await;
}

#[tokio::test]
async fn a_proxy_gets_deltas_against_what_it_serves_and_whole_snapshots_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.sock");
    let (server, publisher) = SnapshotServer::bind(&path, DEFAULT_MAX_FRAME).unwrap();
    let acked = server.acked_versions();
    tokio::spawn(server.serve());
    let first: &'static RecordingSink = Box::leak(Box::default());
    let c = client(&path, "first");
    tokio::spawn(async move { c.run(first).await });

    publisher.publish(1, b"one".to_vec());
    eventually("ack 1", || acked.get("first") == Some(1)).await;
    publisher.publish_delta(2, 1, b"two delta".to_vec(), || b"two whole".to_vec());
    eventually("ack 2", || acked.get("first") == Some(2)).await;
    assert_eq!(
        first.applied.lock().unwrap().last(),
        Some(&(2, b"two delta".to_vec()))
    );

    // A proxy that connects now serves nothing, so it gets version 2 whole.
    let second: &'static RecordingSink = Box::leak(Box::default());
    let c = client(&path, "second");
    tokio::spawn(async move { c.run(second).await });
    eventually("second acks 2", || acked.get("second") == Some(2)).await;
    assert_eq!(
        second.applied.lock().unwrap().clone(),
        vec![(2, b"two whole".to_vec())]
    );

    // A refused delta: the proxy keeps serving 2 and is sent version 3 whole.
    publisher.publish_delta(3, 2, b"bad".to_vec(), || b"three whole".to_vec());
    eventually("both ack 3", || {
        acked.get("first") == Some(3) && acked.get("second") == Some(3)
    })
    .await;
    for sink in [first, second] {
        assert_eq!(
            sink.applied.lock().unwrap().last(),
            Some(&(3, b"three whole".to_vec()))
        );
    }
    publisher.publish_delta(4, 3, b"four delta".to_vec(), || b"four whole".to_vec());
    eventually("both ack 4", || {
        acked.get("first") == Some(4) && acked.get("second") == Some(4)
    })
    .await;
    assert_eq!(first.deltas.lock().unwrap().clone(), vec![2, 4]);
    assert_eq!(second.deltas.lock().unwrap().clone(), vec![4]);

    // A delta whose base this proxy never served (it refused version 5) is not applied:
    // the proxy says so and gets version 6 whole.
    publisher.publish(5, b"bad".to_vec());
    tokio::time::sleep(Duration::from_millis(100)).await;
    publisher.publish_delta(6, 5, b"six delta".to_vec(), || b"six whole".to_vec());
    eventually("both ack 6", || {
        acked.get("first") == Some(6) && acked.get("second") == Some(6)
    })
    .await;
    for sink in [first, second] {
        assert_eq!(
            sink.applied.lock().unwrap().last(),
            Some(&(6, b"six whole".to_vec()))
        );
    }

    // With a delta, the whole snapshot is encoded only when a proxy needs it: not for the
    // proxies that serve the base, once for one that connects afterwards.
    let encoded = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = encoded.clone();
    publisher.publish_delta(7, 6, b"seven delta".to_vec(), move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        b"seven whole".to_vec()
    });
    eventually("both ack 7", || {
        acked.get("first") == Some(7) && acked.get("second") == Some(7)
    })
    .await;
    assert_eq!(encoded.load(std::sync::atomic::Ordering::SeqCst), 0);
    let third: &'static RecordingSink = Box::leak(Box::default());
    let c = client(&path, "third");
    tokio::spawn(async move { c.run(third).await });
    eventually("third acks 7", || acked.get("third") == Some(7)).await;
    assert_eq!(
        third.applied.lock().unwrap().clone(),
        vec![(7, b"seven whole".to_vec())]
    );
    let fourth: &'static RecordingSink = Box::leak(Box::default());
    let c = client(&path, "fourth");
    tokio::spawn(async move { c.run(fourth).await });
    eventually("fourth acks 7", || acked.get("fourth") == Some(7)).await;
    assert_eq!(encoded.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(
        first.deltas.lock().unwrap().clone(),
        vec![2, 4, 7],
        "version 7 is not sent twice"
    );
}

#[test]
fn bind_refuses_a_live_socket_and_a_regular_file() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("live.sock");
        let (_server, _p) = SnapshotServer::bind(&path, DEFAULT_MAX_FRAME).unwrap();
        let err = SnapshotServer::bind(&path, DEFAULT_MAX_FRAME)
            .err()
            .unwrap();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        assert!(SnapshotServer::bind(&file, DEFAULT_MAX_FRAME).is_err());
    });
}

#[test]
fn backoff_grows_to_its_cap_with_jitter_and_resets() {
    let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    let delays: Vec<_> = (0..10).map(|_| b.next_delay()).collect();
    assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
    assert!(delays.iter().all(|d| *d <= Duration::from_secs(2)));
    assert!(
        delays[9] >= Duration::from_secs(1),
        "should reach the cap's range: {delays:?}"
    );
    b.reset();
    assert!(b.next_delay() <= Duration::from_millis(100));
}

/// A hand-written controller that sends a frame of an unknown protocol version and a
/// truncated frame before a good one: the proxy must answer each with a Nack naming the
/// problem, keep the connection, and apply the good snapshot after them.
#[tokio::test]
async fn bad_frames_are_nacked_and_the_connection_kept() {
    use portico_wire::{read_message, write_message, Message};
    use tokio::io::AsyncWriteExt;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fake.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let sink: &'static RecordingSink = Box::leak(Box::default());
    let c = client(&path, "p");
    tokio::spawn(async move { c.run(sink).await });

    // Every read is bounded: a proxy that stopped answering fails the test, not hangs it.
    async fn recv(stream: &mut tokio::net::UnixStream) -> Message {
        tokio::time::timeout(
            Duration::from_secs(5),
            read_message(stream, DEFAULT_MAX_FRAME),
        )
        .await
        .expect("proxy answered in time")
        .unwrap()
    }
    let (mut stream, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
        .await
        .unwrap()
        .unwrap();
    let hello = recv(&mut stream).await;
    assert_eq!(
        hello,
        Message::Hello {
            proxy_id: "p".into(),
            last_applied_version: 0
        }
    );

    // Protocol version 99, kind Snapshot, version 1, payload "x".
    stream
        .write_all(&[0, 0, 0, 12, 0, 99, 2, 0, 0, 0, 0, 0, 0, 0, 1, b'x'])
        .await
        .unwrap();
    match recv(&mut stream).await {
        Message::Nack { version: 0, reason } => {
            assert!(reason.contains("protocol version 99"), "{reason}")
        }
        other => panic!("expected a Nack, got {other:?}"),
    }
    // A Snapshot frame too short to hold its version.
    stream
        .write_all(&[0, 0, 0, 5, 0, 1, 2, 0, 0])
        .await
        .unwrap();
    match recv(&mut stream).await {
        Message::Nack { version: 0, reason } => {
            assert!(reason.contains("malformed Snapshot"), "{reason}")
        }
        other => panic!("expected a Nack, got {other:?}"),
    }
    write_message(
        &mut stream,
        &Message::Snapshot {
            version: 3,
            payload: b"good".to_vec(),
        },
    )
    .await
    .unwrap();
    assert_eq!(recv(&mut stream).await, Message::Ack { version: 3 });
    assert_eq!(sink.last_applied(), 3);
}
