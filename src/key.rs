//! The cache key (docs/key.md): a canonical, language-independent encoding of a
//! [`TaskInterface`], hashed with BLAKE3. Pure: no I/O, no panics on any input.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use prost_types::value::Kind;
use prost_types::Value;

use crate::error::Error;
use crate::proto::{ContainerSpec, TaskInterface};

pub mod wire;

/// The domain and version tag that starts every encoding.
pub const DOMAIN: &str = "stepcache/task-interface/v1";

/// A 32-byte BLAKE3 cache key; displayed as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(pub [u8; 32]);

impl CacheKey {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut hex = [0u8; 64];
        hex::encode_to_slice(self.0, &mut hex).map_err(|_| fmt::Error)?;
        f.write_str(std::str::from_utf8(&hex).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({self})")
    }
}

impl FromStr for CacheKey {
    type Err = Error;

    /// Parses exactly 64 lowercase hex digits.
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || {
            Error::invalid(format!(
                "cache_key must be 64 lowercase hex digits, got {:?}",
                truncate(s, 80)
            ))
        };
        if s.len() != 64
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| bad())?;
        Ok(CacheKey(out))
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The key of an interface.
pub fn cache_key(ti: &TaskInterface) -> Result<CacheKey, Error> {
    let bytes = canonical_bytes(ti)?;
    Ok(CacheKey(*blake3::hash(&bytes).as_bytes()))
}

/// The exact bytes that are hashed (docs/key.md, "The encoding").
pub fn canonical_bytes(ti: &TaskInterface) -> Result<Vec<u8>, Error> {
    if ti.component.is_empty() {
        return Err(Error::invalid("interface.component must not be empty"));
    }
    let mut e = Encoder(Vec::with_capacity(256));
    let no_container = ContainerSpec::default();
    let container = ti.container.as_ref().unwrap_or(&no_container);
    let ignored: BTreeSet<&str> = ti.ignore_inputs.iter().map(String::as_str).collect();
    let volumes: BTreeSet<&str> = container.volumes.iter().map(String::as_str).collect();

    e.str(DOMAIN);
    e.str(&ti.component);
    e.str(&ti.cache_version);
    e.str(&container.image);
    e.list(&container.command, |e, s| e.str(s));
    e.list(&container.args, |e, s| e.str(s));
    e.map(container.env.iter(), |e, _, v| {
        e.str(v);
        Ok(())
    })?;
    e.list(&volumes.into_iter().collect::<Vec<_>>(), |e, s| e.str(s));
    let params = ti
        .parameters
        .iter()
        .filter(|(k, _)| !ignored.contains(k.as_str()));
    e.map(params, |e, k, v| {
        e.value(v, &format_args!("interface.parameters.{k}"), 0)
    })?;
    let arts = ti
        .input_artifacts
        .iter()
        .filter(|(k, _)| !ignored.contains(k.as_str()));
    e.map(arts, |e, _, ids| {
        e.list(&ids.ids, |e, id| e.0.extend_from_slice(&id.to_be_bytes()));
        Ok(())
    })?;
    e.map(ti.output_artifacts.iter(), |e, _, t| {
        e.str(t);
        Ok(())
    })?;
    e.map(ti.output_parameters.iter(), |e, _, t| {
        e.str(t);
        Ok(())
    })?;
    Ok(e.0)
}

/// Checks that a value could be hashed (finite numbers, bounded nesting);
/// `path` names it in the error.
pub fn check_value(v: &Value, path: &str) -> Result<(), Error> {
    Encoder(Vec::new()).value(v, &path, 0)
}

/// Deepest nesting of a parameter value that is accepted (protobuf decoding stops
/// at 100 levels anyway; this keeps the encoder's recursion bounded for any caller).
pub const MAX_VALUE_DEPTH: usize = 64;

struct Encoder(Vec<u8>);

impl Encoder {
    fn u32(&mut self, n: usize) {
        // Counts and lengths above u32::MAX cannot arrive through a gRPC message
        // (the decoder's size limit is far below), so saturating never changes a key.
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        self.0.extend_from_slice(&n.to_be_bytes());
    }

    fn str(&mut self, s: &str) {
        self.u32(s.len());
        self.0.extend_from_slice(s.as_bytes());
    }

    fn list<T>(&mut self, xs: &[T], mut f: impl FnMut(&mut Self, &T)) {
        self.u32(xs.len());
        for x in xs {
            f(self, x);
        }
    }

    /// Maps are BTreeMaps (or filtered iterators over them): keys come sorted by
    /// their UTF-8 bytes, which is Rust's `str` order.
    fn map<'a, V: 'a>(
        &mut self,
        entries: impl Iterator<Item = (&'a String, &'a V)>,
        mut f: impl FnMut(&mut Self, &str, &V) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let entries: Vec<_> = entries.collect();
        self.u32(entries.len());
        for (k, v) in entries {
            self.str(k);
            f(self, k, v)?;
        }
        Ok(())
    }

    /// Encodes one parameter value; `path` names it in error messages (and
    /// is formatted only for them).
    fn value(&mut self, v: &Value, path: &dyn fmt::Display, depth: usize) -> Result<(), Error> {
        if depth > MAX_VALUE_DEPTH {
            return Err(Error::invalid(format!(
                "{path} is nested deeper than {MAX_VALUE_DEPTH} levels"
            )));
        }
        match &v.kind {
            None | Some(Kind::NullValue(_)) => self.0.push(0),
            Some(Kind::BoolValue(b)) => {
                self.0.push(1);
                self.0.push(u8::from(*b));
            }
            Some(Kind::NumberValue(x)) => {
                if !x.is_finite() {
                    return Err(Error::invalid(format!(
                        "{path} is {x}: NaN and infinite numbers are not allowed"
                    )));
                }
                let x = if *x == 0.0 { 0.0f64 } else { *x };
                self.0.push(2);
                self.0.extend_from_slice(&x.to_be_bytes());
            }
            Some(Kind::StringValue(s)) => {
                self.0.push(3);
                self.str(s);
            }
            Some(Kind::ListValue(l)) => {
                self.0.push(4);
                self.u32(l.values.len());
                for (i, item) in l.values.iter().enumerate() {
                    self.value(item, &format_args!("{path}[{i}]"), depth + 1)?;
                }
            }
            Some(Kind::StructValue(s)) => {
                self.0.push(5);
                self.map(s.fields.iter(), |e, k, item| {
                    e.value(item, &format_args!("{path}.{k}"), depth + 1)
                })?;
            }
        }
        Ok(())
    }
}

/// The hashed parts of an interface as readable `path -> rendering` pairs, in
/// canonical order. Used by `ComputeCacheKey.canonical_fields` and to explain
/// misses (two interfaces with equal renderings have equal keys).
pub fn readable_fields(ti: &TaskInterface) -> Result<BTreeMap<String, String>, Error> {
    canonical_bytes(ti)?; // validates exactly as the key does
    let container = ti.container.clone().unwrap_or_default();
    let ignored: BTreeSet<&str> = ti.ignore_inputs.iter().map(String::as_str).collect();
    let mut out = BTreeMap::new();
    out.insert("component".to_string(), quote(&ti.component));
    out.insert("cache_version".to_string(), quote(&ti.cache_version));
    out.insert("container.image".to_string(), quote(&container.image));
    out.insert(
        "container.command".to_string(),
        quote_list(&container.command),
    );
    out.insert("container.args".to_string(), quote_list(&container.args));
    for (k, v) in &container.env {
        out.insert(format!("container.env.{k}"), quote(v));
    }
    let volumes: BTreeSet<String> = container.volumes.iter().cloned().collect();
    out.insert(
        "container.volumes".to_string(),
        quote_list(&volumes.into_iter().collect::<Vec<_>>()),
    );
    for (k, v) in &ti.parameters {
        if !ignored.contains(k.as_str()) {
            out.insert(format!("parameters.{k}"), render_value(v));
        }
    }
    for (k, v) in &ti.input_artifacts {
        if !ignored.contains(k.as_str()) {
            let ids: Vec<String> = v.ids.iter().map(i64::to_string).collect();
            out.insert(
                format!("input_artifacts.{k}"),
                format!("[{}]", ids.join(", ")),
            );
        }
    }
    for (k, v) in &ti.output_artifacts {
        out.insert(format!("output_artifacts.{k}"), quote(v));
    }
    for (k, v) in &ti.output_parameters {
        out.insert(format!("output_parameters.{k}"), quote(v));
    }
    Ok(out)
}

/// Lines `path: old -> new` for every hashed field that differs between two
/// interfaces (`<absent>` where one side lacks the field).
pub fn differences(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> Vec<String> {
    let paths: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let absent = "<absent>".to_string();
    paths
        .into_iter()
        .filter_map(|p| {
            let (a, b) = (old.get(p).unwrap_or(&absent), new.get(p).unwrap_or(&absent));
            (a != b).then(|| format!("{p}: {a} -> {b}"))
        })
        .collect()
}

/// Of `candidates`, the one whose hashed fields differ least from `target`
/// (ties go to the earliest), with its differences from `target`.
pub fn nearest<'a>(
    target: &TaskInterface,
    candidates: impl IntoIterator<Item = &'a TaskInterface>,
) -> Result<Option<(usize, Vec<String>)>, Error> {
    let want = readable_fields(target)?;
    let mut best: Option<(usize, Vec<String>)> = None;
    for (i, c) in candidates.into_iter().enumerate() {
        // A recorded interface that no longer validates cannot be compared.
        let Ok(fields) = readable_fields(c) else {
            continue;
        };
        let diff = differences(&fields, &want);
        if best.as_ref().is_none_or(|(_, d)| diff.len() < d.len()) {
            best = Some((i, diff));
        }
    }
    Ok(best)
}

fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

fn quote_list(xs: &[String]) -> String {
    let items: Vec<String> = xs.iter().map(|s| quote(s)).collect();
    format!("[{}]", items.join(", "))
}

/// Renders a parameter value as JSON (numbers as Rust prints an f64: `0.1`, `3`).
pub fn render_value(v: &Value) -> String {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => "null".to_string(),
        Some(Kind::BoolValue(b)) => b.to_string(),
        Some(Kind::NumberValue(x)) => {
            let x = if *x == 0.0 { 0.0 } else { *x };
            x.to_string()
        }
        Some(Kind::StringValue(s)) => quote(s),
        Some(Kind::ListValue(l)) => {
            let items: Vec<String> = l.values.iter().map(render_value).collect();
            format!("[{}]", items.join(", "))
        }
        Some(Kind::StructValue(s)) => {
            let items: Vec<String> = s
                .fields
                .iter()
                .map(|(k, v)| format!("{}: {}", quote(k), render_value(v)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ArtifactIds, ContainerSpec};

    fn num(x: f64) -> Value {
        Value {
            kind: Some(Kind::NumberValue(x)),
        }
    }

    fn base() -> TaskInterface {
        TaskInterface {
            component: "train".into(),
            container: Some(ContainerSpec {
                image: "python:3.11".into(),
                volumes: vec!["b".into(), "a".into()],
                ..Default::default()
            }),
            parameters: [("lr".to_string(), num(0.1))].into_iter().collect(),
            input_artifacts: [("data".to_string(), ArtifactIds { ids: vec![12] })]
                .into_iter()
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn minimal_vector() {
        let ti = TaskInterface {
            component: "noop".into(),
            ..Default::default()
        };
        assert_eq!(
            cache_key(&ti).unwrap().to_string(),
            "0beb5416866a6bcf277708219d8cf866921b5330322481a68497f7e7b3b92ec7"
        );
    }

    #[test]
    fn empty_component_is_invalid() {
        let err = cache_key(&TaskInterface::default()).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(m) if m.contains("component")));
    }

    #[test]
    fn nan_and_infinity_are_invalid_and_named() {
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut ti = base();
            ti.parameters.insert("x".into(), num(bad));
            let err = cache_key(&ti).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidArgument(m) if m.contains("parameters.x")),
                "{err:?}"
            );
        }
    }

    #[test]
    fn negative_zero_equals_zero() {
        let mut a = base();
        a.parameters.insert("z".into(), num(0.0));
        let mut b = base();
        b.parameters.insert("z".into(), num(-0.0));
        assert_eq!(cache_key(&a).unwrap(), cache_key(&b).unwrap());
    }

    #[test]
    fn volumes_are_a_set_and_ids_keep_order() {
        let mut a = base();
        a.container.as_mut().unwrap().volumes = vec!["a".into(), "b".into(), "a".into()];
        assert_eq!(cache_key(&a).unwrap(), cache_key(&base()).unwrap());
        let mut c = base();
        c.input_artifacts
            .insert("more".into(), ArtifactIds { ids: vec![1, 2] });
        let mut d = base();
        d.input_artifacts
            .insert("more".into(), ArtifactIds { ids: vec![2, 1] });
        assert_ne!(cache_key(&c).unwrap(), cache_key(&d).unwrap());
    }

    #[test]
    fn ignored_inputs_leave_the_key() {
        let mut a = base();
        a.ignore_inputs = vec!["lr".into(), "data".into()];
        let mut b = a.clone();
        b.parameters.insert("lr".into(), num(0.5));
        b.input_artifacts
            .insert("data".into(), ArtifactIds { ids: vec![99] });
        assert_eq!(cache_key(&a).unwrap(), cache_key(&b).unwrap());
        assert_ne!(cache_key(&a).unwrap(), cache_key(&base()).unwrap());
    }

    #[test]
    fn key_parses_only_lowercase_hex() {
        let k = cache_key(&base()).unwrap();
        assert_eq!(k.to_string().parse::<CacheKey>().unwrap(), k);
        assert!(k.to_string().to_uppercase().parse::<CacheKey>().is_err());
        assert!("abc".parse::<CacheKey>().is_err());
        assert!("g".repeat(64).parse::<CacheKey>().is_err());
        assert!("é".repeat(32).parse::<CacheKey>().is_err());
    }

    #[test]
    fn nearest_prefers_fewest_differences_then_earliest() {
        let mut one = base();
        one.parameters.insert("lr".into(), num(0.2));
        let mut two = one.clone();
        two.container.as_mut().unwrap().image = "other".into();
        let target = base();
        let (i, d) = nearest(&target, [&two, &one, &one]).unwrap().unwrap();
        assert_eq!(i, 1);
        assert_eq!(d, vec!["parameters.lr: 0.2 -> 0.1".to_string()]);
        assert!(nearest(&target, []).unwrap().is_none());
    }

    #[test]
    fn differences_name_the_changed_fields() {
        let old = base();
        let mut new = base();
        new.parameters.insert("lr".into(), num(0.01));
        new.input_artifacts
            .insert("data".into(), ArtifactIds { ids: vec![13] });
        let d = differences(
            &readable_fields(&old).unwrap(),
            &readable_fields(&new).unwrap(),
        );
        assert_eq!(
            d,
            vec![
                "input_artifacts.data: [12] -> [13]".to_string(),
                "parameters.lr: 0.1 -> 0.01".to_string()
            ]
        );
    }
}
