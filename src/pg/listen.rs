//! The LISTEN loop of one replica, on a connection of its own: wakes local
//! waiters of keys published or released anywhere (`CHANNEL`), evicts the
//! hits other replicas' writes change and acknowledges them
//! (`hits::HITS_CHANNEL`), hands this replica's writers their
//! acknowledgements (`hits::ACKS_CHANNEL`), and renews the lease that lets
//! this replica serve from memory (see `hits`).
//!
//! After a lost connection it reconnects; once listening again it wakes every
//! waiter (it may have missed notifications), joins `replicas` as a new row
//! with its memory emptied, and sends again the writes of its own still
//! waiting for acknowledgements (those sent meanwhile were lost).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, Notification};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::hits::{Hits, ACKS_CHANNEL, FENCE_LOCK, HITS_CHANNEL, LEASE_MS, NOW_MS, RENEW};
use super::{parse_payload, CHANNEL};
use crate::error::{Error, Result};
use crate::reservations::Waiters;

/// The `application_name` of LISTEN connections (in `pg_stat_activity`).
pub const APPLICATION_NAME: &str = "stepcache-listen";

/// A connection that LISTENs: its client, and its notifications, which end
/// when the connection is lost.
pub(super) type Listening = (Client, mpsc::UnboundedReceiver<Notification>);

pub(super) async fn listening(
    config: &tokio_postgres::Config,
    tls: &MakeRustlsConnect,
) -> Result<Listening> {
    let mut config = config.clone();
    config.application_name(APPLICATION_NAME);
    let (client, mut conn) = config.connect(tls.clone()).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(n).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "LISTEN connection lost");
                    return;
                }
                None => return,
            }
        }
    });
    // Acknowledgements and lease renewals need not wait for the disk: a
    // crash of PostgreSQL ends every LISTEN connection anyway.
    client
        .batch_execute(&format!(
            "SET synchronous_commit = off; LISTEN {CHANNEL}; LISTEN {HITS_CHANNEL}; \
             LISTEN {ACKS_CHANNEL}"
        ))
        .await?;
    Ok((client, rx))
}

pub(super) async fn listen(
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    first: Listening,
    waiters: Arc<Waiters>,
    hits: Arc<Hits>,
) {
    let mut current = Some(first);
    loop {
        let (mut client, mut notes) = match current.take() {
            Some(l) => l,
            None => match listening(&config, &tls).await {
                Ok(l) => {
                    waiters.notify_all();
                    l
                }
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN: cannot reconnect; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            },
        };
        let ended = match start(&mut client, &hits).await {
            Ok(()) => serve(&mut client, &mut notes, &waiters, &hits).await,
            Err(e) => Err(e),
        };
        hits.stop();
        if let Err(e) = ended {
            tracing::warn!(error = %e, "LISTEN connection lost; reconnecting");
        }
        drop(client);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Joins `replicas` and sends again the writes waiting for acknowledgements.
async fn start(client: &mut Client, hits: &Hits) -> Result<()> {
    join(client, hits).await?;
    for payload in hits.waiting() {
        client
            .execute("SELECT pg_notify($1, $2)", &[&HITS_CHANNEL, &payload])
            .await?;
    }
    Ok(())
}

/// Registers this replica as a new row, under `FENCE_LOCK` alone (after its
/// LISTEN is active), removing its previous row and rows whose lease ended
/// a minute ago.
async fn join(client: &mut Client, hits: &Hits) -> Result<()> {
    if !hits.enabled() {
        return Ok(());
    }
    let (row, old) = hits.next_row();
    let sent = Instant::now();
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&FENCE_LOCK])
        .await?;
    tx.execute(
        &format!("DELETE FROM replicas WHERE id = $1 OR lease_until_ms < {NOW_MS} - 60000"),
        &[&old],
    )
    .await?;
    tx.execute(
        &format!(
            "INSERT INTO replicas (id, lease_until_ms, backend_pid) \
             VALUES ($1, {NOW_MS} + $2, pg_backend_pid())"
        ),
        &[&row, &LEASE_MS],
    )
    .await?;
    tx.commit().await?;
    hits.registered(&row, sent);
    Ok(())
}

/// Extends the lease; joins again if it ran out (writers stopped waiting for
/// this replica then) or the row is gone.
async fn renew(client: &mut Client, hits: &Hits) -> Result<()> {
    let Some(row) = hits.row() else {
        return join(client, hits).await;
    };
    let sent = Instant::now();
    let renewed = client
        .execute(
            &format!(
                "UPDATE replicas SET lease_until_ms = {NOW_MS} + $2 \
                 WHERE id = $1 AND lease_until_ms > {NOW_MS}"
            ),
            &[&row, &LEASE_MS],
        )
        .await?;
    if renewed == 0 {
        hits.stop();
        return join(client, hits).await;
    }
    hits.registered(&row, sent);
    Ok(())
}

async fn serve(
    client: &mut Client,
    notes: &mut mpsc::UnboundedReceiver<Notification>,
    waiters: &Waiters,
    hits: &Hits,
) -> Result<()> {
    let mut renewal = tokio::time::interval(RENEW);
    renewal.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    renewal.tick().await;
    loop {
        tokio::select! {
            n = notes.recv() => {
                let Some(n) = n else {
                    return Err(Error::Unavailable("the LISTEN connection ended".into()));
                };
                let mut tokens = Vec::new();
                let mut next = Some(n);
                while let Some(n) = next {
                    match n.channel() {
                        HITS_CHANNEL => tokens.extend(hits.changed(n.payload())),
                        ACKS_CHANNEL => hits.acknowledged(n.payload()),
                        _ => match parse_payload(n.payload()) {
                            Some((ns, key)) => waiters.notify(ns, &key),
                            None => waiters.notify_all(),
                        },
                    }
                    next = notes.try_recv().ok();
                }
                for payload in hits.acks(&tokens) {
                    client
                        .execute("SELECT pg_notify($1, $2)", &[&ACKS_CHANNEL, &payload])
                        .await?;
                }
            }
            _ = renewal.tick(), if hits.enabled() => renew(client, hits).await?,
        }
    }
}
