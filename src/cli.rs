//! Operator subcommands that talk to a running server over gRPC.

use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use tonic::transport::Channel;

use crate::json;
use crate::proto::cache_service_client::CacheServiceClient;
use crate::proto::invalidate_cache_request::Selector;
use crate::proto::metadata_store_service_client::MetadataStoreServiceClient;
use crate::proto::{
    get_cached_execution_request, CachePolicy, ExplainCacheMissRequest, GarbageCollectCacheRequest,
    GetCacheStatsRequest, GetCachedExecutionRequest, InvalidateCacheRequest, Outcome,
    PruneExecutionsRequest, TaskInterface, Trigger,
};

/// Where and as whom a subcommand talks.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// Server address.
    #[arg(long, default_value = "http://127.0.0.1:50051", env = "STEPCACHE_ADDR")]
    pub addr: String,
    /// Namespace.
    #[arg(
        long,
        short = 'n',
        default_value = "default",
        env = "STEPCACHE_NAMESPACE"
    )]
    pub namespace: String,
    /// Print the response as JSON.
    #[arg(long)]
    pub json: bool,
}

async fn channel(addr: &str) -> anyhow::Result<Channel> {
    Channel::from_shared(addr.to_string())
        .with_context(|| format!("bad --addr {addr}"))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot reach the server at {addr}"))
}

fn status(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", e.code(), e.message())
}

/// Parses `30d`, `12h`, `90s`... into a protobuf Duration.
pub fn parse_duration(s: &str) -> anyhow::Result<prost_types::Duration> {
    let d = humantime::parse_duration(s).with_context(|| format!("bad duration {s:?}"))?;
    Ok(prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    })
}

fn print(t: &Target, value: serde_json::Value, human: impl FnOnce() -> String) {
    if t.json {
        println!("{value:#}");
    } else {
        println!("{}", human());
    }
}

/// `stepcache get --interface F.json`: would this task hit?
pub async fn get(t: &Target, interface: &str, manual: bool) -> anyhow::Result<()> {
    let ti: TaskInterface = json::parse("stepcache.v1.TaskInterface", interface)?;
    let mut c = CacheServiceClient::new(channel(&t.addr).await?);
    let r = c
        .get_cached_execution(GetCachedExecutionRequest {
            namespace: t.namespace.clone(),
            target: Some(get_cached_execution_request::Target::Interface(ti)),
            policy: manual.then(|| CachePolicy {
                trigger: Trigger::Manual as i32,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .map_err(status)?
        .into_inner();
    let value = json::render("stepcache.v1.GetCachedExecutionResponse", &r)?;
    print(t, value, || {
        let outcome = Outcome::try_from(r.outcome)
            .map(|o| o.as_str_name().trim_start_matches("OUTCOME_").to_string())
            .unwrap_or_default();
        let mut out = format!("{outcome}  key {}", r.cache_key);
        if let Some(e) = &r.execution {
            out.push_str(&format!("\n  execution {}", e.id));
        }
        for (name, list) in &r.output_artifacts {
            for a in &list.artifacts {
                out.push_str(&format!("\n  output {name}: artifact {} {}", a.id, a.uri));
            }
        }
        if !r.reason.is_empty() {
            out.push_str(&format!("\n  reason: {}", r.reason));
        }
        out
    });
    Ok(())
}

/// What `stepcache invalidate` selects.
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
pub struct InvalidateBy {
    #[arg(long)]
    pub cache_key: Option<String>,
    #[arg(long)]
    pub execution_id: Option<i64>,
    #[arg(long)]
    pub artifact_id: Option<i64>,
    #[arg(long)]
    pub component: Option<String>,
}

pub async fn invalidate(t: &Target, by: InvalidateBy) -> anyhow::Result<()> {
    let selector = match by {
        InvalidateBy {
            cache_key: Some(k), ..
        } => Selector::CacheKey(k),
        InvalidateBy {
            execution_id: Some(id),
            ..
        } => Selector::ExecutionId(id),
        InvalidateBy {
            artifact_id: Some(id),
            ..
        } => Selector::ArtifactId(id),
        InvalidateBy {
            component: Some(c), ..
        } => Selector::Component(c),
        _ => anyhow::bail!("give one of --cache-key, --execution-id, --artifact-id, --component"),
    };
    let mut c = CacheServiceClient::new(channel(&t.addr).await?);
    let n = c
        .invalidate_cache(InvalidateCacheRequest {
            namespace: t.namespace.clone(),
            selector: Some(selector),
        })
        .await
        .map_err(status)?
        .into_inner()
        .invalidated;
    print(t, json!({ "invalidated": n }), || {
        format!("invalidated {n} cache entries")
    });
    Ok(())
}

pub async fn stats(t: &Target) -> anyhow::Result<()> {
    let mut c = CacheServiceClient::new(channel(&t.addr).await?);
    let s = c
        .get_cache_stats(GetCacheStatsRequest {
            namespace: t.namespace.clone(),
        })
        .await
        .map_err(status)?
        .into_inner();
    let value = json::render("stepcache.v1.GetCacheStatsResponse", &s)?;
    print(t, value, || {
        format!(
            "namespace {}\n  entries      {}\n  hits         {}\n  misses       {}\n  disabled     {}\n  in progress  {}",
            t.namespace, s.entries, s.hits, s.misses, s.disabled, s.in_progress
        )
    });
    Ok(())
}

pub async fn explain(t: &Target, interface: &str) -> anyhow::Result<()> {
    let ti: TaskInterface = json::parse("stepcache.v1.TaskInterface", interface)?;
    let mut c = CacheServiceClient::new(channel(&t.addr).await?);
    let r = c
        .explain_cache_miss(ExplainCacheMissRequest {
            namespace: t.namespace.clone(),
            interface: Some(ti),
        })
        .await
        .map_err(status)?
        .into_inner();
    let value = json::render("stepcache.v1.ExplainCacheMissResponse", &r)?;
    print(t, value, || {
        match &r.nearest {
        None => format!("key {}\n  no recorded execution of this component", r.cache_key),
        Some(e) if r.differences.is_empty() => format!(
            "key {}\n  nearest: execution {} has the same key (see `stepcache get` for why it is not served)",
            r.cache_key, e.id
        ),
        Some(e) => {
            let mut out = format!("key {}\n  nearest: execution {} ({})", r.cache_key, e.id, e.cache_key);
            for d in &r.differences {
                out.push_str(&format!("\n  {d}"));
            }
            out
        }
    }
    });
    Ok(())
}

pub async fn prune(t: &Target, older_than: &str, dry_run: bool) -> anyhow::Result<()> {
    let mut c = MetadataStoreServiceClient::new(channel(&t.addr).await?);
    let r = c
        .prune_executions(PruneExecutionsRequest {
            namespace: t.namespace.clone(),
            older_than: Some(parse_duration(older_than)?),
            dry_run,
        })
        .await
        .map_err(status)?
        .into_inner();
    let value = json::render("stepcache.v1.PruneExecutionsResponse", &r)?;
    let verb = if dry_run { "would delete" } else { "deleted" };
    print(t, value, || {
        format!(
            "{verb} {} executions, {} events, {} artifacts, {} cache entries in namespace {}",
            r.executions_deleted,
            r.events_deleted,
            r.artifacts_deleted,
            r.cache_entries_deleted,
            t.namespace
        )
    });
    Ok(())
}

pub async fn gc(t: &Target, all_namespaces: bool) -> anyhow::Result<()> {
    let mut c = CacheServiceClient::new(channel(&t.addr).await?);
    let removed = c
        .garbage_collect_cache(GarbageCollectCacheRequest {
            namespace: t.namespace.clone(),
            all_namespaces,
        })
        .await
        .map_err(status)?
        .into_inner()
        .removed;
    print(t, json!({ "removed": removed }), || {
        format!("removed {removed} expired or invalidated cache entries")
    });
    Ok(())
}
