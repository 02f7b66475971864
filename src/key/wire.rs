//! The cache key straight from an interface's protobuf encoding, for
//! GetCachedExecution: a lookup's decode into owned messages (a String per
//! name, a BTreeMap per map) costs more than computing its key.
//!
//! It reads the encodings clients send: fields in any order, IDs packed or
//! not, a repeated scalar field (the last one counts, as in decoding). For
//! anything else it returns None: a map key given twice, a container sent in
//! parts, parameters nested deeper than 16, an unknown field, a limit
//! passed, anything invalid. The caller then decodes and validates as usual, so every
//! error, and every key of an unusual encoding, stays that of
//! `validate::interface`. Tests hold it to that path on every spec vector, on
//! generated interfaces and encodings, and on mutations of their bytes.

use super::{CacheKey, Encoder, DOMAIN};

/// The limits `validate::interface` checks.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub max_string_bytes: usize,
    pub max_entries: usize,
}

/// One field's value as it is on the wire.
#[derive(Clone, Copy)]
enum Field<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
}

fn varint(b: &mut &[u8]) -> Option<u64> {
    let mut x = 0u64;
    for i in 0..10 {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        // The 10th byte holds bit 63 only (a decoder rejects more).
        if i == 9 && byte > 1 {
            return None;
        }
        x |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Some(x);
        }
    }
    None
}

/// Calls `f` with each field of a message (number, value); None when the
/// message is malformed or `f` gives up.
fn fields<'a>(mut b: &'a [u8], mut f: impl FnMut(u64, Field<'a>) -> Option<()>) -> Option<()> {
    while !b.is_empty() {
        let key = varint(&mut b)?;
        let number = key >> 3;
        if number == 0 {
            return None;
        }
        let field = match key & 7 {
            0 => Field::Varint(varint(&mut b)?),
            1 => {
                let (v, rest) = b.split_first_chunk::<8>()?;
                b = rest;
                Field::Fixed64(u64::from_le_bytes(*v))
            }
            2 => {
                let len = usize::try_from(varint(&mut b)?).ok()?;
                let (v, rest) = b.split_at_checked(len)?;
                b = rest;
                Field::Bytes(v)
            }
            // Groups and fixed32: no field of an interface is one.
            _ => return None,
        };
        f(number, field)?;
    }
    Some(())
}

fn text(f: Field<'_>) -> Option<&str> {
    match f {
        Field::Bytes(b) => std::str::from_utf8(b).ok(),
        _ => None,
    }
}

/// A map entry: its key and its value, each at most once (encoders leave
/// out a key or value that is its type's default).
fn entry(b: &[u8]) -> Option<(&str, Option<Field<'_>>)> {
    let (mut key, mut value) = (None, None);
    fields(b, |n, f| {
        let slot = match n {
            1 => &mut key,
            2 => &mut value,
            _ => return None,
        };
        slot.is_none().then(|| *slot = Some(f))
    })?;
    let key = match key {
        Some(k) => text(k)?,
        None => "",
    };
    Some((key, value))
}

/// A map entry whose value is a string.
fn string_entry(f: Field<'_>) -> Option<(&str, &str)> {
    let Field::Bytes(e) = f else { return None };
    match entry(e)? {
        (k, Some(v)) => Some((k, text(v)?)),
        (k, None) => Some((k, "")),
    }
}

/// Entries sorted by key, as a decoded map iterates; None when a key repeats
/// (decoding would keep the last).
fn sorted<T>(mut entries: Vec<(&str, T)>) -> Option<Vec<(&str, T)>> {
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    entries
        .windows(2)
        .all(|w| w[0].0 != w[1].0)
        .then_some(entries)
}

#[derive(Default)]
struct Container<'a> {
    image: &'a str,
    command: Vec<&'a str>,
    args: Vec<&'a str>,
    env: Vec<(&'a str, &'a str)>,
    volumes: Vec<&'a str>,
}

fn container(b: &[u8]) -> Option<Container<'_>> {
    let mut c = Container::default();
    fields(b, |n, f| {
        match n {
            1 => c.image = text(f)?,
            2 => c.command.push(text(f)?),
            3 => c.args.push(text(f)?),
            4 => c.env.push(string_entry(f)?),
            5 => c.volumes.push(text(f)?),
            _ => return None,
        }
        Some(())
    })?;
    Some(c)
}

#[derive(Default)]
struct Interface<'a> {
    component: &'a str,
    cache_version: &'a str,
    container: Option<&'a [u8]>,
    parameters: Vec<(&'a str, &'a [u8])>,
    inputs: Vec<(&'a str, &'a [u8])>,
    outputs: Vec<(&'a str, &'a str)>,
    output_parameters: Vec<(&'a str, &'a str)>,
    ignore: Vec<&'a str>,
}

/// A map entry whose value is a message: its key and the message's bytes
/// (none: the default message).
fn message_entry(f: Field<'_>) -> Option<(&str, &[u8])> {
    let Field::Bytes(e) = f else { return None };
    match entry(e)? {
        (k, Some(Field::Bytes(v))) => Some((k, v)),
        (k, None) => Some((k, &[])),
        _ => None,
    }
}

fn interface(b: &[u8]) -> Option<Interface<'_>> {
    let mut ti = Interface::default();
    fields(b, |n, f| {
        match n {
            1 => ti.component = text(f)?,
            2 => ti.cache_version = text(f)?,
            // A second container would be merged into the first.
            3 => match (f, ti.container) {
                (Field::Bytes(c), None) => ti.container = Some(c),
                _ => return None,
            },
            4 => ti.parameters.push(message_entry(f)?),
            5 => ti.inputs.push(message_entry(f)?),
            6 => ti.outputs.push(string_entry(f)?),
            7 => ti.output_parameters.push(string_entry(f)?),
            8 => ti.ignore.push(text(f)?),
            _ => return None,
        }
        Some(())
    })?;
    Some(ti)
}

/// Calls `f` with each ID of an `ArtifactIds` (packed or not), in order.
fn ids(b: &[u8], mut f: impl FnMut(i64) -> Option<()>) -> Option<()> {
    fields(b, |n, field| match (n, field) {
        (1, Field::Varint(v)) => f(v as i64),
        (1, Field::Bytes(mut packed)) => {
            while !packed.is_empty() {
                f(varint(&mut packed)? as i64)?;
            }
            Some(())
        }
        _ => None,
    })
}

/// Deepest nesting of lists and structs read here; deeper ones go to the full
/// path, so that this never accepts what decoding's recursion limit rejects.
const MAX_DEPTH: usize = 16;

/// A parameter value's canonical encoding (`Encoder::value`).
fn value(e: &mut Encoder, b: &[u8], depth: usize) -> Option<()> {
    if depth > MAX_DEPTH {
        return None;
    }
    let mut kind = None;
    fields(b, |n, f| kind.replace((n, f)).is_none().then_some(()))?;
    match kind {
        None | Some((1, Field::Varint(_))) => e.0.push(0),
        Some((2, Field::Fixed64(bits))) => {
            let x = f64::from_bits(bits);
            if !x.is_finite() {
                return None;
            }
            let x = if x == 0.0 { 0.0f64 } else { x };
            e.0.push(2);
            e.0.extend_from_slice(&x.to_be_bytes());
        }
        Some((3, f)) => {
            let s = text(f)?;
            e.0.push(3);
            e.str(s);
        }
        Some((4, Field::Varint(v))) => {
            e.0.push(1);
            e.0.push(u8::from(v != 0));
        }
        Some((5, Field::Bytes(st))) => {
            // Struct: map<string, Value> fields = 1.
            let mut entries = Vec::new();
            fields(st, |n, f| match n {
                1 => {
                    entries.push(message_entry(f)?);
                    Some(())
                }
                _ => None,
            })?;
            let entries = sorted(entries)?;
            e.0.push(5);
            e.u32(entries.len());
            for (k, v) in entries {
                e.str(k);
                value(e, v, depth + 1)?;
            }
        }
        Some((6, Field::Bytes(list))) => {
            // ListValue: repeated Value values = 1.
            let mut items = Vec::new();
            fields(list, |n, f| match (n, f) {
                (1, Field::Bytes(v)) => {
                    items.push(v);
                    Some(())
                }
                _ => None,
            })?;
            e.0.push(4);
            e.u32(items.len());
            for v in items {
                value(e, v, depth + 1)?;
            }
        }
        _ => return None,
    }
    Some(())
}

/// The key of the interface encoded in `b`, checked as `validate::interface`
/// checks it; None when only decoding it can tell (see the module's doc).
pub fn cache_key(b: &[u8], bounds: Bounds) -> Option<CacheKey> {
    let ti = interface(b)?;
    let c = match ti.container {
        Some(c) => container(c)?,
        None => Container::default(),
    };
    let within = |n: usize| n <= bounds.max_entries;
    let short = |s: &str| s.len() <= bounds.max_string_bytes;
    if ti.component.is_empty()
        || !short(ti.component)
        || !short(ti.cache_version)
        || !short(c.image)
        || ![
            c.command.len(),
            c.args.len(),
            c.env.len(),
            c.volumes.len(),
            ti.parameters.len(),
            ti.inputs.len(),
            ti.outputs.len(),
            ti.output_parameters.len(),
        ]
        .into_iter()
        .all(within)
    {
        return None;
    }
    let ignored = |k: &str| ti.ignore.contains(&k);
    let env = sorted(c.env)?;
    let mut volumes = c.volumes;
    volumes.sort_unstable();
    volumes.dedup();
    let parameters = sorted(ti.parameters)?;
    let inputs = sorted(ti.inputs)?;
    let outputs = sorted(ti.outputs)?;
    let output_parameters = sorted(ti.output_parameters)?;

    let mut e = Encoder(Vec::with_capacity(512));
    e.str(DOMAIN);
    e.str(ti.component);
    e.str(ti.cache_version);
    e.str(c.image);
    e.list(&c.command, |e, s| e.str(s));
    e.list(&c.args, |e, s| e.str(s));
    string_map(&mut e, &env);
    e.list(&volumes, |e, s| e.str(s));
    // Ignored parameters are not hashed, but must decode.
    let mut scratch = Encoder(Vec::new());
    for (_, v) in parameters.iter().filter(|(k, _)| ignored(k)) {
        value(&mut scratch, v, 0)?;
    }
    e.u32(parameters.iter().filter(|(k, _)| !ignored(k)).count());
    for (k, v) in parameters.iter().filter(|(k, _)| !ignored(k)) {
        e.str(k);
        value(&mut e, v, 0)?;
    }
    // Every input's IDs are counted and checked (as validation does),
    // ignored or not.
    let counts = inputs
        .iter()
        .map(|(_, b)| {
            let mut n = 0usize;
            ids(b, |id| {
                n += 1;
                (id > 0).then_some(())
            })?;
            within(n).then_some(n)
        })
        .collect::<Option<Vec<usize>>>()?;
    let hashed = || inputs.iter().zip(&counts).filter(|((k, _), _)| !ignored(k));
    e.u32(hashed().count());
    for ((k, b), n) in hashed() {
        e.str(k);
        e.u32(*n);
        ids(b, |id| {
            e.0.extend_from_slice(&id.to_be_bytes());
            Some(())
        })?;
    }
    string_map(&mut e, &outputs);
    string_map(&mut e, &output_parameters);
    Some(CacheKey(*blake3::hash(&e.0).as_bytes()))
}

/// A map of strings, sorted, as `Encoder::map` writes it.
fn string_map(e: &mut Encoder, map: &[(&str, &str)]) {
    e.u32(map.len());
    for (k, v) in map {
        e.str(k);
        e.str(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ArtifactIds, ContainerSpec, TaskInterface};
    use crate::validate::{self, Limits};
    use prost::Message;
    use prost_types::value::Kind;
    use prost_types::{ListValue, Value};

    fn bounds() -> Bounds {
        let l = Limits::default();
        Bounds {
            max_string_bytes: l.max_string_bytes,
            max_entries: l.max_interface_entries,
        }
    }

    /// What decoding and validating the same bytes gives.
    fn slow(b: &[u8]) -> Option<CacheKey> {
        let ti = TaskInterface::decode(b).ok()?;
        validate::interface(&ti, "interface", &Limits::default()).ok()
    }

    fn v(kind: Kind) -> Value {
        Value { kind: Some(kind) }
    }

    fn task() -> TaskInterface {
        TaskInterface {
            component: "train".into(),
            cache_version: "2".into(),
            container: Some(ContainerSpec {
                image: "python:3.11".into(),
                command: vec!["python".into(), "-m".into()],
                args: vec!["--x".into()],
                env: [("B".to_string(), "2".to_string()), ("A".into(), "1".into())].into(),
                volumes: vec!["b".into(), "a".into(), "b".into()],
            }),
            parameters: [
                ("lr".to_string(), v(Kind::NumberValue(-0.0))),
                ("name".into(), v(Kind::StringValue("é".into()))),
                ("on".into(), v(Kind::BoolValue(true))),
                ("none".into(), v(Kind::NullValue(0))),
                ("unset".into(), Value { kind: None }),
                ("seed".into(), v(Kind::NumberValue(7.0))),
            ]
            .into(),
            input_artifacts: [
                ("data".to_string(), ArtifactIds { ids: vec![12, 9] }),
                ("seed".into(), ArtifactIds { ids: vec![3] }),
                ("empty".into(), ArtifactIds { ids: vec![] }),
            ]
            .into(),
            output_artifacts: [("model".to_string(), "system.Model".to_string())].into(),
            output_parameters: [("acc".to_string(), "double".to_string())].into(),
            ignore_inputs: vec!["seed".into()],
        }
    }

    #[test]
    fn agrees_with_decoding_on_a_full_interface() {
        let b = task().encode_to_vec();
        let fast = cache_key(&b, bounds());
        assert!(fast.is_some(), "a plain interface takes the fast path");
        assert_eq!(fast, slow(&b));
        assert_eq!(fast, crate::key::cache_key(&task()).ok());
    }

    /// Raw fields, to write encodings the generated code never produces.
    fn field(out: &mut Vec<u8>, number: u64, bytes: &[u8]) {
        prost::encoding::encode_key(
            number as u32,
            prost::encoding::WireType::LengthDelimited,
            out,
        );
        prost::encoding::encode_varint(bytes.len() as u64, out);
        out.extend_from_slice(bytes);
    }

    #[test]
    fn unusual_encodings_agree_or_fall_back() {
        let base = task().encode_to_vec();
        let mut cases: Vec<Vec<u8>> = Vec::new();
        // A later component replaces the earlier (the last one counts).
        let mut b = base.clone();
        field(&mut b, 1, b"other");
        cases.push(b);
        // Fields in reverse order.
        let mut rev = Vec::new();
        let mut parts = Vec::new();
        fields(&base, |n, f| {
            parts.push((n, f));
            Some(())
        })
        .unwrap();
        for (n, f) in parts.iter().rev() {
            match f {
                Field::Bytes(x) => field(&mut rev, *n, x),
                _ => unreachable!("an interface has only length-delimited fields"),
            }
        }
        cases.push(rev);
        // A parameter given twice: decoding keeps the last.
        let mut b = base.clone();
        let entry = TaskInterface {
            parameters: [("lr".to_string(), v(Kind::NumberValue(1.0)))].into(),
            ..Default::default()
        }
        .encode_to_vec();
        b.extend_from_slice(&entry);
        cases.push(b);
        // A second container part: decoding merges the two.
        let mut b = base.clone();
        let more = ContainerSpec {
            args: vec!["--y".into()],
            ..Default::default()
        }
        .encode_to_vec();
        field(&mut b, 3, &more);
        cases.push(b);
        // Unpacked IDs.
        let mut b = TaskInterface {
            component: "c".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let mut ids = Vec::new();
        for id in [5u64, 6] {
            prost::encoding::encode_key(1, prost::encoding::WireType::Varint, &mut ids);
            prost::encoding::encode_varint(id, &mut ids);
        }
        let mut e = Vec::new();
        field(&mut e, 1, b"in");
        field(&mut e, 2, &ids);
        field(&mut b, 5, &e);
        cases.push(b);
        // A list parameter; a NaN; a zero ID; no component; parameters
        // nested 20 deep (decoding keys them; this path leaves them to it).
        let mut deep = v(Kind::BoolValue(true));
        for _ in 0..20 {
            deep = v(Kind::ListValue(ListValue { values: vec![deep] }));
        }
        cases.push(
            TaskInterface {
                component: "c".into(),
                parameters: [("deep".to_string(), deep)].into(),
                ..Default::default()
            }
            .encode_to_vec(),
        );
        for ti in [
            TaskInterface {
                component: "c".into(),
                parameters: [(
                    "l".to_string(),
                    v(Kind::ListValue(ListValue {
                        values: vec![v(Kind::BoolValue(false))],
                    })),
                )]
                .into(),
                ..Default::default()
            },
            TaskInterface {
                component: "c".into(),
                parameters: [("x".to_string(), v(Kind::NumberValue(f64::NAN)))].into(),
                ..Default::default()
            },
            TaskInterface {
                component: "c".into(),
                input_artifacts: [("in".to_string(), ArtifactIds { ids: vec![0] })].into(),
                ..Default::default()
            },
            TaskInterface::default(),
        ] {
            cases.push(ti.encode_to_vec());
        }
        let mut b = base.clone();
        field(&mut b, 99, b"future");
        cases.push(b);

        let mut fast_ones = 0;
        for (i, b) in cases.iter().enumerate() {
            let fast = cache_key(b, bounds());
            if fast.is_some() {
                fast_ones += 1;
                assert_eq!(fast, slow(b), "case {i}");
            }
        }
        assert_eq!(
            fast_ones, 4,
            "repeated scalars, reordering, unpacked IDs and a list are read"
        );
        assert_eq!(cache_key(&cases[0], bounds()), slow(&cases[0]));
        assert!(
            cache_key(&cases[2], bounds()).is_none(),
            "a repeated map key"
        );
        assert!(
            cache_key(&cases[3], bounds()).is_none(),
            "a container in parts"
        );
        assert!(cache_key(&cases[5], bounds()).is_none(), "20 deep");
        assert!(slow(&cases[5]).is_some());
    }

    #[test]
    fn limits_send_it_to_the_full_path() {
        let b = task().encode_to_vec();
        let tight = Bounds {
            max_string_bytes: 4,
            ..bounds()
        };
        assert!(cache_key(&b, tight).is_none(), "component over 4 bytes");
        let few = Bounds {
            max_entries: 2,
            ..bounds()
        };
        assert!(cache_key(&b, few).is_none(), "6 parameters over 2 entries");
    }
}
