//! The `stepcache` command against a real server: key, get, explain, stats,
//! invalidate, gc and prune, human-readable and --json.

mod common;

use std::process::Command;

use common::*;
use stepcache::proto::*;

fn stepcache(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_stepcache"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// The CLI blocks this thread while the in-process server answers on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut meta = server.meta().await;
    let ti = iface("cli-task", &[("lr", num(0.1))], &[]);
    let put = meta
        .put_execution(put_req("ops", &ti, ExecutionState::Complete, "mem://cli"))
        .await
        .unwrap()
        .into_inner();
    let file = dir.path().join("iface.json");
    std::fs::write(
        &file,
        stepcache::json::render("stepcache.v1.TaskInterface", &ti)
            .unwrap()
            .to_string(),
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let addr = server.addr.as_str();
    let target = ["--addr", addr, "--namespace", "ops"];

    let (ok, out, err) = stepcache(&["key", f]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), put.cache_key);

    let (ok, out, err) = stepcache(&[&["get", "--interface", f][..], &target].concat());
    assert!(ok, "{err}");
    assert!(out.starts_with("HIT"), "{out}");
    assert!(
        out.contains(&format!("artifact {}", put.output_artifact_ids[0])),
        "{out}"
    );

    let (ok, out, _) = stepcache(&[&["get", "--json", "--interface", f][..], &target].concat());
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["outcome"], "OUTCOME_HIT");
    assert_eq!(v["cache_key"], put.cache_key.as_str());

    let other = iface("cli-task", &[("lr", num(0.2))], &[]);
    std::fs::write(
        &file,
        stepcache::json::render("stepcache.v1.TaskInterface", &other)
            .unwrap()
            .to_string(),
    )
    .unwrap();
    let (ok, out, _) = stepcache(&[&["explain", "--interface", f][..], &target].concat());
    assert!(ok);
    assert!(out.contains("parameters.lr: 0.1 -> 0.2"), "{out}");

    let (ok, out, _) = stepcache(&[&["stats", "--json"][..], &target].concat());
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["entries"], "1",
        "int64 renders as a JSON string in protojson"
    );
    assert_eq!(v["hits"], "2");

    let (ok, out, _) =
        stepcache(&[&["invalidate", "--cache-key", &put.cache_key][..], &target].concat());
    assert!(ok);
    assert_eq!(out.trim(), "invalidated 1 cache entries");
    let (ok, out, _) = stepcache(&[&["gc"][..], &target].concat());
    assert!(ok);
    assert_eq!(out.trim(), "removed 1 expired or invalidated cache entries");

    let (ok, out, _) =
        stepcache(&[&["prune", "--older-than", "30d", "--json"][..], &target].concat());
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["executions_deleted"], "0",
        "nothing is 30 days old: {out}"
    );

    // Errors come back with their gRPC code and a non-zero exit.
    let (ok, _, err) =
        stepcache(&[&["invalidate", "--execution-id", "99999"][..], &target].concat());
    assert!(!ok);
    assert!(err.contains("NotFound"), "{err}");
    let (ok, _, err) = stepcache(&["stats", "--addr", "http://127.0.0.1:1"]);
    assert!(!ok);
    assert!(err.contains("cannot reach"), "{err}");
    server.stop().await;
}

#[test]
fn serve_refuses_zero_worker_threads() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().to_str().unwrap();
    let (ok, _, err) = stepcache(&["serve", "--data-dir", dir, "--worker-threads", "0"]);
    assert!(!ok, "a server with no worker threads started");
    assert!(err.contains("--worker-threads"), "{err}");
}
