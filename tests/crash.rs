//! SIGKILL in the middle of a stream of durable pushes: after a restart, every push that
//! got a 2xx answer is stored and reaches a client resuming with `since`, on SQLite and on
//! PostgreSQL.

use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};

mod common;
use common::pg::Postgres;
use common::{try_http, Ws};

/// Starts the herald binary; returns it and its address.
fn herald(env: &[(&str, &str)]) -> (Child, SocketAddr) {
    let mut cmd = common::herald_cmd();
    cmd.args(["serve", "--dev-auth", "--listen", "127.0.0.1:0"])
        .env("HERALD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("herald binary");
    let addr = common::listening_addr(&mut child);
    (child, addr)
}

async fn push(addr: SocketAddr, i: u64) -> Option<u64> {
    let body = format!(r#"{{"to":{{"users":["kim"]}},"event":"n","data":{i}}}"#);
    let req = format!(
        "POST /api/v1/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // The server is killed while writers push: a refused connection ends the writer.
    let (status, text) = try_http(addr, req.as_bytes()).await?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["seqs"]["kim"].as_u64()
}

async fn killed_mid_stream_loses_no_acknowledged_push(env: &[(&str, &str)]) {
    let (mut child, addr) = herald(env);
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let acknowledged = acknowledged.clone();
            tokio::spawn(async move {
                for i in 0.. {
                    match push(addr, w * 1_000_000 + i).await {
                        Some(seq) => acknowledged.lock().unwrap().push(seq),
                        None => break,
                    }
                }
            })
        })
        .collect();
    // Kill once a good number of pushes have been answered, with more in flight.
    let deadline = tokio::time::Instant::now() + common::WAIT * 4;
    while acknowledged.lock().unwrap().len() < 300 {
        assert!(tokio::time::Instant::now() < deadline, "pushes too slow");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    for w in writers {
        w.await.unwrap();
    }
    let mut acked = acknowledged.lock().unwrap().clone();
    acked.sort_unstable();
    let last = *acked.last().unwrap();

    let (mut child, addr) = herald(env);
    let mut ws = Ws::connect(addr, "EIO=4&transport=websocket").await;
    assert!(ws.text().await.starts_with("0{"));
    ws.send_text(r#"40{"userId":"kim","since":0}"#).await;
    assert!(ws.text().await.starts_with("40{"));
    let mut seqs = Vec::new();
    while seqs.last() != Some(&last) {
        let t = ws.text().await;
        // Stored messages (`42<seq>[…]`); herald's `inbox` state comes first, unnumbered.
        if let Some(rest) = t.strip_prefix("42") {
            let d: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if !d.is_empty() {
                seqs.push(d.parse::<u64>().unwrap());
            }
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // Gapless from 1, so every acknowledged seq is there, each once.
    assert_eq!(seqs, (1..=last).collect::<Vec<_>>());
    for seq in acked {
        assert!(
            seqs.binary_search(&seq).is_ok(),
            "acknowledged seq {seq} lost"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_killed_mid_stream_loses_no_acknowledged_push() {
    let dir = std::env::temp_dir().join(format!("herald-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_s = dir.to_str().unwrap().to_owned();
    killed_mid_stream_loses_no_acknowledged_push(&[("HERALD_STORE_DATA_DIR", &dir_s)]).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed_mid_stream_loses_no_acknowledged_push() {
    let pg = Postgres::start();
    let url = pg.database("herald_crash");
    killed_mid_stream_loses_no_acknowledged_push(&[("HERALD_STORE_URL", &url)]).await;
}
