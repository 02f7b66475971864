//! TLS to PostgreSQL as the URL's `sslmode` asks: `verify-full` against the
//! CA that signed the server's certificate connects over TLS (every
//! connection of the database); a CA that did not sign it is refused;
//! `disable` stays plaintext. Runs only with STEPCACHE_TEST_POSTGRES and
//! STEPCACHE_TEST_POSTGRES_CA set (scripts/ci-postgres.sh sets both).

mod common;

use common::*;
use stepcache::proto::*;
use stepcache::server::Config;

/// Asserts that `ti` hits on `server`.
async fn hits(server: &TestServer, ti: &TaskInterface) {
    let r = server
        .cache()
        .await
        .get_cached_execution(lookup_req("default", ti))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outcome(), Outcome::Hit);
}

/// (connections of database `db` over TLS, all of its connections), not
/// counting the asking one.
async fn tls_connections(db: &str) -> (i64, i64) {
    let r = &pg_rows(
        &postgres_base().unwrap(),
        &format!(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_ssl s \
             JOIN pg_stat_activity a USING (pid) WHERE a.datname = '{db}'"
        ),
    )
    .await[0];
    (r.get(0), r.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sslmode_verify_full_connects_over_tls_and_a_foreign_ca_is_refused() {
    let Some(ca) = test_env(
        "STEPCACHE_TEST_POSTGRES_CA",
        "a TLS-enabled PostgreSQL and its CA; scripts/ci-postgres.sh sets it",
    ) else {
        return;
    };
    let Some((url, db)) = fresh_database("tls").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();

    let server = server_on(
        &format!("{url}?sslmode=verify-full&sslrootcert={ca}"),
        dir.path(),
    )
    .await;
    let ti = iface("tls", &[], &[]);
    server
        .meta()
        .await
        .put_execution(put_req("default", &ti, ExecutionState::Complete, "mem://t"))
        .await
        .unwrap();
    hits(&server, &ti).await;
    let (tls, all) = tls_connections(&db).await;
    // The pool's connection and the LISTEN connection at least.
    assert!(
        all >= 2 && tls == all,
        "{tls} of {all} connections over TLS"
    );
    server.stop().await;

    // sslmode=disable: the same data, over plaintext.
    let server = server_on(&format!("{url}?sslmode=disable"), dir.path()).await;
    hits(&server, &ti).await;
    let (tls, all) = tls_connections(&db).await;
    assert!(all >= 2 && tls == 0, "{tls} of {all} connections over TLS");
    server.stop().await;

    // A CA that did not sign the server's certificate: no connection, so
    // the server does not start.
    let foreign = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let foreign_ca = dir.path().join("foreign-ca.pem");
    std::fs::write(&foreign_ca, foreign.cert.pem()).unwrap();
    let mut config = Config::new(dir.path());
    config.store_url = Some(format!(
        "{url}?sslmode=verify-full&sslrootcert={}",
        foreign_ca.display()
    ));
    let e = match stepcache::server::open_store(&config).await {
        Ok(_) => panic!("connected to a server whose certificate the CA did not sign"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("certificate"), "{e}");
}
