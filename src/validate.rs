//! Validation at the edge: protobuf requests in, checked values for the store out.
//! Pure functions; every error names the field and why.

use std::fmt;

use crate::clock::timestamp_ms;
use crate::domain::{content_digest, ExecutionWrite};
use crate::error::{Error, Result};
use crate::key::{self, CacheKey};
use crate::proto::{
    Artifact, ArtifactState, Context, Execution, ExecutionState, PutExecutionRequest, TaskInterface,
};
use crate::query::TimeRange;

/// Namespace used when a request leaves it empty.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Size limits on what a request may carry.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest decoded gRPC message, in bytes.
    pub max_message_bytes: usize,
    /// Most entries in each map or list of an interface (parameters, inputs,
    /// outputs, env, args...), and most outputs of one PutExecution.
    pub max_interface_entries: usize,
    /// Longest string field (names, URIs, component, image...), in bytes.
    pub max_string_bytes: usize,
    /// Largest page of a List call.
    pub max_page_size: usize,
    /// Page size when a List call leaves it 0.
    pub default_page_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 32 * 1024 * 1024,
            max_interface_entries: 10_000,
            max_string_bytes: 64 * 1024,
            max_page_size: 1000,
            default_page_size: 100,
        }
    }
}

/// The namespace of a request: empty means `default`; otherwise 1 to 253
/// characters of `[A-Za-z0-9._-]`, starting with a letter or digit.
pub fn namespace(ns: &str) -> Result<String> {
    if ns.is_empty() {
        return Ok(DEFAULT_NAMESPACE.to_string());
    }
    let ok = ns.len() <= 253
        && ns.as_bytes()[0].is_ascii_alphanumeric()
        && ns
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(ns.to_string())
    } else {
        Err(Error::invalid(format!(
            "namespace {:?} is invalid: use 1-253 characters of [A-Za-z0-9._-], starting with a letter or digit",
            ns.chars().take(64).collect::<String>()
        )))
    }
}

/// The page size of a List call: 0 = the default; above the limit or negative is invalid.
pub fn page_size(n: i32, limits: &Limits) -> Result<usize> {
    match usize::try_from(n) {
        Ok(0) => Ok(limits.default_page_size),
        Ok(n) if n <= limits.max_page_size => Ok(n),
        _ => Err(Error::invalid(format!(
            "page_size must be between 0 and {}, got {n}",
            limits.max_page_size
        ))),
    }
}

const TOKEN_PREFIX: &str = "p1.";

/// An opaque page token naming the last record of the previous page.
pub fn page_token(last_id: Option<i64>) -> String {
    last_id
        .map(|id| format!("{TOKEN_PREFIX}{}", hex::encode(id.to_be_bytes())))
        .unwrap_or_default()
}

pub fn parse_page_token(t: &str) -> Result<Option<i64>> {
    if t.is_empty() {
        return Ok(None);
    }
    let bad = || {
        Error::invalid(format!(
            "page_token {t:?} is not a token this server issued"
        ))
    };
    let hex_part = t.strip_prefix(TOKEN_PREFIX).ok_or_else(bad)?;
    let mut bytes = [0u8; 8];
    hex::decode_to_slice(hex_part, &mut bytes).map_err(|_| bad())?;
    let id = i64::from_be_bytes(bytes);
    if id <= 0 {
        return Err(bad());
    }
    Ok(Some(id))
}

/// `field` is formatted only for the error, as in `string`.
pub fn positive_id(id: i64, field: impl fmt::Display) -> Result<i64> {
    if id > 0 {
        Ok(id)
    } else {
        Err(Error::invalid(format!(
            "{field} must be a positive ID, got {id}"
        )))
    }
}

/// An optional ID filter: 0 = none.
pub fn optional_id(id: i64, field: &str) -> Result<Option<i64>> {
    match id {
        0 => Ok(None),
        id => positive_id(id, field).map(Some),
    }
}

/// The IDs of a request (context IDs, the IDs of a Get call): positive, at
/// most `max_interface_entries`, duplicates dropped (first occurrence kept),
/// so that a request's cost follows its distinct IDs.
pub fn ids(ids: &[i64], field: &str, limits: &Limits) -> Result<Vec<i64>> {
    count(ids.len(), field, limits)?;
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    let mut out: Vec<i64> = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        positive_id(*id, format_args!("{field}[{i}]"))?;
        if seen.insert(*id) {
            out.push(*id);
        }
    }
    Ok(out)
}

/// A PutContexts entry: namespace filled in; type and name required to create.
pub fn context(mut c: Context, field: &str, limits: &Limits) -> Result<Context> {
    c.namespace = namespace(&c.namespace).map_err(|e| prefix(e, field))?;
    if c.id < 0 {
        return Err(Error::invalid(format!(
            "{field}.id must be 0 (create) or an existing ID, got {}",
            c.id
        )));
    }
    for (s, f) in [(&c.r#type, "type"), (&c.name, "name")] {
        if c.id == 0 && s.is_empty() {
            return Err(Error::invalid(format!(
                "{field}.{f} must not be empty when creating a context"
            )));
        }
        string(s, format_args!("{field}.{f}"), limits)?;
    }
    count(
        c.properties.len(),
        format_args!("{field}.properties"),
        limits,
    )?;
    for (k, v) in &c.properties {
        key::check_value(v, &format!("{field}.properties.{k}"))?;
    }
    c.create_time = None;
    Ok(c)
}

fn epoch_ms(t: Option<&prost_types::Timestamp>, field: &str) -> Result<Option<i64>> {
    match t {
        None => Ok(None),
        Some(ts) if (0..1_000_000_000).contains(&ts.nanos) => Ok(Some(timestamp_ms(ts))),
        Some(ts) => Err(Error::invalid(format!(
            "{field}.nanos must be between 0 and 999999999, got {}",
            ts.nanos
        ))),
    }
}

/// A created-time filter: `created_after <= create_time < created_before`.
pub fn created_range(
    after: Option<&prost_types::Timestamp>,
    before: Option<&prost_types::Timestamp>,
) -> Result<TimeRange> {
    let r = TimeRange {
        after_ms: epoch_ms(after, "created_after")?,
        before_ms: epoch_ms(before, "created_before")?,
    };
    if let (Some(a), Some(b)) = (r.after_ms, r.before_ms) {
        if a >= b {
            return Err(Error::invalid(format!(
                "created_after ({a} ms) must be before created_before ({b} ms)"
            )));
        }
    }
    Ok(r)
}

pub fn cache_key_hex(s: &str, field: &str) -> Result<CacheKey> {
    s.parse::<CacheKey>()
        .map_err(|e| Error::invalid(format!("{field}: {e}")))
}

/// `field` is formatted only for the error (a path such as
/// `format_args!("{field}.component")` costs nothing when the value is fine).
fn string(s: &str, field: impl fmt::Display, limits: &Limits) -> Result<()> {
    if s.len() > limits.max_string_bytes {
        return Err(Error::invalid(format!(
            "{field} is {} bytes, over the limit of {} (max_string_bytes)",
            s.len(),
            limits.max_string_bytes
        )));
    }
    Ok(())
}

fn count(n: usize, field: impl fmt::Display, limits: &Limits) -> Result<()> {
    if n > limits.max_interface_entries {
        return Err(Error::invalid(format!(
            "{field} has {n} entries, over the limit of {} (max_interface_entries)",
            limits.max_interface_entries
        )));
    }
    Ok(())
}

/// `interface` for an interface still encoded, without decoding it
/// (`key::wire`): its key, or None when only decoding can tell (then decode
/// it and call `interface`, which answers the same for any bytes this
/// accepts, and gives the errors).
pub fn interface_bytes(encoded: &[u8], limits: &Limits) -> Option<CacheKey> {
    key::wire::cache_key(
        encoded,
        key::wire::Bounds {
            max_string_bytes: limits.max_string_bytes,
            max_entries: limits.max_interface_entries,
        },
    )
}

/// Checks an interface's sizes and computes its key (which validates the rest).
pub fn interface(ti: &TaskInterface, field: &str, limits: &Limits) -> Result<CacheKey> {
    string(&ti.component, format_args!("{field}.component"), limits)?;
    string(
        &ti.cache_version,
        format_args!("{field}.cache_version"),
        limits,
    )?;
    if let Some(c) = &ti.container {
        string(&c.image, format_args!("{field}.container.image"), limits)?;
        count(
            c.command.len(),
            format_args!("{field}.container.command"),
            limits,
        )?;
        count(c.args.len(), format_args!("{field}.container.args"), limits)?;
        count(c.env.len(), format_args!("{field}.container.env"), limits)?;
        count(
            c.volumes.len(),
            format_args!("{field}.container.volumes"),
            limits,
        )?;
    }
    count(
        ti.parameters.len(),
        format_args!("{field}.parameters"),
        limits,
    )?;
    count(
        ti.input_artifacts.len(),
        format_args!("{field}.input_artifacts"),
        limits,
    )?;
    count(
        ti.output_artifacts.len(),
        format_args!("{field}.output_artifacts"),
        limits,
    )?;
    count(
        ti.output_parameters.len(),
        format_args!("{field}.output_parameters"),
        limits,
    )?;
    for (name, ids) in &ti.input_artifacts {
        count(
            ids.ids.len(),
            format_args!("{field}.input_artifacts.{name}"),
            limits,
        )?;
        for id in &ids.ids {
            positive_id(*id, format_args!("{field}.input_artifacts.{name}"))?;
        }
    }
    key::cache_key(ti).map_err(|e| match e {
        Error::InvalidArgument(m) => Error::InvalidArgument(
            m.strip_prefix("interface.")
                .map(|rest| format!("{field}.{rest}"))
                .unwrap_or(m),
        ),
        other => other,
    })
}

fn artifact_state(state: i32, field: &str) -> Result<()> {
    ArtifactState::try_from(state)
        .map(|_| ())
        .map_err(|_| Error::invalid(format!("{field}.state: unknown value {state}")))
}

/// A PutArtifacts entry: namespace filled in, enum and sizes checked.
pub fn artifact(mut a: Artifact, field: &str, limits: &Limits) -> Result<Artifact> {
    a.namespace = namespace(&a.namespace).map_err(|e| prefix(e, field))?;
    if a.id < 0 {
        return Err(Error::invalid(format!(
            "{field}.id must be 0 (create) or an existing ID, got {}",
            a.id
        )));
    }
    artifact_state(a.state, field)?;
    for (s, f) in [
        (&a.r#type, "type"),
        (&a.name, "name"),
        (&a.uri, "uri"),
        (&a.external_id, "external_id"),
        (&a.content_digest, "content_digest"),
    ] {
        string(s, format_args!("{field}.{f}"), limits)?;
    }
    count(
        a.properties.len(),
        format_args!("{field}.properties"),
        limits,
    )?;
    a.create_time = None;
    a.update_time = None;
    Ok(a)
}

fn prefix(e: Error, field: &str) -> Error {
    match e {
        Error::InvalidArgument(m) => Error::InvalidArgument(format!("{field}.{m}")),
        other => other,
    }
}

/// A PutExecution: namespace defaults, enums, the interface's key, outputs.
pub fn execution_write(req: PutExecutionRequest, limits: &Limits) -> Result<ExecutionWrite> {
    let digest = content_digest(&req);
    let mut e: Execution = req
        .execution
        .ok_or_else(|| Error::invalid("execution is required"))?;
    e.namespace = namespace(&e.namespace).map_err(|err| prefix(err, "execution"))?;
    if e.id < 0 {
        return Err(Error::invalid(format!(
            "execution.id must be 0 (create) or an existing ID, got {}",
            e.id
        )));
    }
    let state = ExecutionState::try_from(e.state)
        .map_err(|_| Error::invalid(format!("execution.state: unknown value {}", e.state)))?;
    if state == ExecutionState::Unspecified {
        return Err(Error::invalid("execution.state must be set"));
    }
    if e.id == 0 && e.interface.is_none() {
        return Err(Error::invalid(
            "execution.interface is required to create an execution",
        ));
    }
    if state == ExecutionState::Cached && e.cached_from_execution_id <= 0 {
        return Err(Error::invalid(
            "execution.cached_from_execution_id is required for a CACHED execution",
        ));
    }
    string(&e.external_id, "execution.external_id", limits)?;
    crate::policy::duration_ms(e.cache_ttl.as_ref(), "execution.cache_ttl")?;
    for (k, v) in &e.output_parameters {
        key::check_value(v, &format!("execution.output_parameters.{k}"))?;
    }
    for (k, v) in &e.properties {
        key::check_value(v, &format!("execution.properties.{k}"))?;
    }
    let key = match &e.interface {
        Some(ti) => Some(interface(ti, "execution.interface", limits)?),
        None => None,
    };
    e.cache_key = String::new();
    e.create_time = None;
    e.update_time = None;
    count(req.outputs.len(), "outputs", limits)?;
    let mut outputs = Vec::with_capacity(req.outputs.len());
    for (i, o) in req.outputs.into_iter().enumerate() {
        let field = format!("outputs[{i}]");
        if o.name.is_empty() {
            return Err(Error::invalid(format!("{field}.name must not be empty")));
        }
        string(&o.name, format_args!("{field}.name"), limits)?;
        let declared = e
            .interface
            .as_ref()
            .map(|ti| ti.output_artifacts.get(&o.name));
        if let Some(None) = declared {
            return Err(Error::invalid(format!(
                "{field}.name {:?} is not declared in execution.interface.output_artifacts",
                o.name
            )));
        }
        let mut a = o
            .artifact
            .ok_or_else(|| Error::invalid(format!("{field}.artifact is required")))?;
        if a.namespace.is_empty() {
            a.namespace = e.namespace.clone();
        }
        let mut a = artifact(a, &format!("{field}.artifact"), limits)?;
        if a.namespace != e.namespace {
            return Err(Error::invalid(format!(
                "{field}.artifact.namespace {:?} differs from execution.namespace {:?}",
                a.namespace, e.namespace
            )));
        }
        if a.r#type.is_empty() {
            if let Some(Some(t)) = declared {
                a.r#type = t.clone();
            }
        }
        outputs.push((o.name, a));
    }
    if !req.reservation_owner.is_empty() {
        crate::reservations::owner(&req.reservation_owner, "reservation_owner")?;
    }
    let context_ids = ids(&req.context_ids, "context_ids", limits)?;
    Ok(ExecutionWrite {
        context_ids,
        execution: e,
        key,
        outputs,
        skip_publish: req.skip_publish,
        reservation_owner: req.reservation_owner,
        digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces() {
        assert_eq!(namespace("").unwrap(), "default");
        assert_eq!(namespace("team-a.prod_1").unwrap(), "team-a.prod_1");
        for bad in ["-x", "a b", "a\0b", "ä", &"x".repeat(254)] {
            assert!(namespace(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn interface_input_ids_must_be_positive() {
        let l = Limits::default();
        let ti = |ids: Vec<i64>| TaskInterface {
            component: "c".into(),
            input_artifacts: [("in".to_string(), crate::proto::ArtifactIds { ids })].into(),
            ..Default::default()
        };
        assert!(interface(&ti(vec![5, 7]), "interface", &l).is_ok());
        for (ids, got) in [(vec![5, 0], "0"), (vec![-3, 5], "-3")] {
            let err = interface(&ti(ids), "interface", &l)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!(
                    "interface.input_artifacts.in must be a positive ID, got {got}"
                )),
                "{err}"
            );
        }
    }

    #[test]
    fn page_sizes_and_tokens() {
        let l = Limits::default();
        assert_eq!(page_size(0, &l).unwrap(), 100);
        assert_eq!(page_size(1000, &l).unwrap(), 1000);
        assert!(page_size(1001, &l).is_err());
        assert!(page_size(-1, &l).is_err());
        assert_eq!(parse_page_token(&page_token(Some(42))).unwrap(), Some(42));
        assert_eq!(parse_page_token("").unwrap(), None);
        for bad in ["42", "p1.zz", "p1.0000000000000000", "p1.00"] {
            assert!(parse_page_token(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn contexts_and_filters() {
        let l = Limits::default();
        let c = context(
            Context {
                r#type: "system.PipelineRun".into(),
                name: "run-1".into(),
                ..Default::default()
            },
            "contexts[0]",
            &l,
        )
        .unwrap();
        assert_eq!(c.namespace, "default");
        let unnamed = Context {
            r#type: "t".into(),
            ..Default::default()
        };
        assert!(
            matches!(context(unnamed.clone(), "contexts[1]", &l), Err(Error::InvalidArgument(m)) if m.contains("contexts[1].name"))
        );
        // An update may leave type and name out.
        assert!(context(Context { id: 5, ..unnamed }, "c", &l).is_ok());
        assert_eq!(ids(&[3, 1, 3], "context_ids", &l).unwrap(), vec![3, 1]);
        assert!(
            matches!(ids(&[1, 0], "context_ids", &l), Err(Error::InvalidArgument(m)) if m.contains("context_ids[1]"))
        );
        let ts = |s| prost_types::Timestamp {
            seconds: s,
            nanos: 0,
        };
        let r = created_range(Some(&ts(1)), Some(&ts(2))).unwrap();
        assert_eq!((r.after_ms, r.before_ms), (Some(1000), Some(2000)));
        assert!(
            matches!(created_range(Some(&ts(2)), Some(&ts(2))), Err(Error::InvalidArgument(m)) if m.contains("created_after"))
        );
        let bad = prost_types::Timestamp {
            seconds: 1,
            nanos: -1,
        };
        assert!(
            matches!(created_range(None, Some(&bad)), Err(Error::InvalidArgument(m)) if m.contains("created_before.nanos"))
        );
        assert_eq!(optional_id(0, "context_id").unwrap(), None);
        assert!(optional_id(-1, "context_id").is_err());
    }

    #[test]
    fn execution_write_checks() {
        let l = Limits::default();
        let ti = TaskInterface {
            component: "c".into(),
            output_artifacts: [("model".to_string(), "system.Model".to_string())].into(),
            ..Default::default()
        };
        let ok = PutExecutionRequest {
            execution: Some(Execution {
                interface: Some(ti.clone()),
                state: ExecutionState::Complete as i32,
                ..Default::default()
            }),
            outputs: vec![crate::proto::OutputArtifact {
                name: "model".into(),
                artifact: Some(Artifact::default()),
            }],
            ..Default::default()
        };
        let w = execution_write(ok.clone(), &l).unwrap();
        assert_eq!(w.execution.namespace, "default");
        assert_eq!(w.outputs[0].1.r#type, "system.Model");
        assert_eq!(w.outputs[0].1.namespace, "default");

        let mut undeclared = ok.clone();
        undeclared.outputs[0].name = "other".into();
        assert!(
            matches!(execution_write(undeclared, &l), Err(Error::InvalidArgument(m)) if m.contains("outputs[0].name"))
        );

        let mut bad_state = ok.clone();
        bad_state.execution.as_mut().unwrap().state = 99;
        assert!(
            matches!(execution_write(bad_state, &l), Err(Error::InvalidArgument(m)) if m.contains("state"))
        );

        let mut empty = ok;
        empty
            .execution
            .as_mut()
            .unwrap()
            .interface
            .as_mut()
            .unwrap()
            .component
            .clear();
        assert!(
            matches!(execution_write(empty, &l), Err(Error::InvalidArgument(m)) if m.contains("execution.interface.component"))
        );
    }
}
