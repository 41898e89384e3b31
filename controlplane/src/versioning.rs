//! Versions of the configuration document: the stored envelope, secret
//! normalization, structured diffs and history summaries, resource merges,
//! and the compact JSON/YAML rendering used by `switchyard-ctl get`.

use prost::Message;
use serde_json::{Map, Value};
use switchyard_proto::config::{self, Config, FieldError};
use switchyard_proto::control::{
    resource::Spec, ChangeType, DiffEntry, ListedResource, Resource, ResourceKind, StoredVersion,
    VersionInfo,
};

/// Envelope format written by this build.
pub const ENVELOPE_VERSION: u32 = 1;

/// Milliseconds since the Unix epoch.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// RFC 3339 (UTC, seconds) rendering of a Unix-ms timestamp.
pub fn format_unix_ms(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.unsigned_abs());
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Why a stored envelope could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("undecodable envelope: {0}")]
    Envelope(prost::DecodeError),
    #[error("version {version}: undecodable config: {err}")]
    Config {
        version: u64,
        err: prost::DecodeError,
    },
    #[error("version {version}: config checksum mismatch")]
    Checksum { version: u64 },
    #[error("version {version}: envelope format {format} is newer than this build understands")]
    Format { version: u64, format: u32 },
}

/// Builds the envelope for `cfg` as version `version`.
pub fn envelope(version: u64, cfg: &Config, meta: EnvelopeMeta) -> StoredVersion {
    let bytes = cfg.encode_to_vec();
    StoredVersion {
        envelope_version: ENVELOPE_VERSION,
        version,
        committed_at_unix_ms: now_unix_ms(),
        author: meta.author,
        comment: meta.comment,
        schema_version: cfg.schema_version.max(1),
        config_sha256: config::sha256_hex(&bytes),
        config: bytes,
        summary: meta.summary,
        rollback_of: meta.rollback_of,
        operation: meta.operation,
    }
}

/// History metadata recorded with a version.
#[derive(Debug, Default, Clone)]
pub struct EnvelopeMeta {
    pub author: String,
    pub comment: String,
    pub summary: String,
    pub rollback_of: u64,
    pub operation: String,
}

/// Decodes an envelope and its config, checking the checksum.
pub fn decode_envelope(bytes: &[u8]) -> Result<(StoredVersion, Config), DecodeError> {
    let env = StoredVersion::decode(bytes).map_err(DecodeError::Envelope)?;
    let cfg = decode_config(&env)?;
    Ok((env, cfg))
}

/// Decodes the config inside an envelope, checking the checksum.
pub fn decode_config(env: &StoredVersion) -> Result<Config, DecodeError> {
    if env.envelope_version > ENVELOPE_VERSION {
        return Err(DecodeError::Format {
            version: env.version,
            format: env.envelope_version,
        });
    }
    if !env.config_sha256.is_empty() && env.config_sha256 != config::sha256_hex(&env.config) {
        return Err(DecodeError::Checksum {
            version: env.version,
        });
    }
    Config::decode(env.config.as_slice()).map_err(|err| DecodeError::Config {
        version: env.version,
        err,
    })
}

/// The envelope's metadata without the document.
pub fn info(env: &StoredVersion) -> VersionInfo {
    VersionInfo {
        version: env.version,
        committed_at_unix_ms: env.committed_at_unix_ms,
        author: env.author.clone(),
        comment: env.comment.clone(),
        summary: env.summary.clone(),
        rollback_of: env.rollback_of,
        config_sha256: env.config_sha256.clone(),
        operation: env.operation.clone(),
    }
}

/// Replaces clear-text key secrets by their sha256 so secrets are never
/// stored or sent on. A key carrying both must agree.
pub fn normalize(cfg: &mut Config) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    for (i, k) in cfg.keys.iter_mut().enumerate() {
        if k.secret.is_empty() {
            continue;
        }
        let hash = config::sha256_hex(k.secret.as_bytes());
        if !k.secret_sha256.is_empty() && !k.secret_sha256.eq_ignore_ascii_case(&hash) {
            errors.push(FieldError {
                path: format!("keys[{i}].secret_sha256"),
                message: "does not match `secret`".into(),
            });
        }
        k.secret_sha256 = hash;
        k.secret.clear();
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Normalizes then validates; all problems with their field paths.
pub fn check(cfg: &mut Config) -> Result<(), Vec<FieldError>> {
    normalize(cfg)?;
    config::validate(cfg).map_err(|e| e.errors)
}

/// `path: message; path: message` for an error list.
pub fn describe_errors(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

// ---------------------------------------------------------------------------
// Resources
// ---------------------------------------------------------------------------

/// Parses `provider`, `providers`, `route`, ... (case-insensitive).
pub fn parse_kind(s: &str) -> Option<ResourceKind> {
    Some(match s.to_ascii_lowercase().as_str() {
        "provider" | "providers" => ResourceKind::Provider,
        "route" | "routes" | "model" | "models" => ResourceKind::Route,
        "price" | "prices" => ResourceKind::Price,
        "tier" | "tiers" => ResourceKind::Tier,
        "key" | "keys" => ResourceKind::Key,
        "budget" | "budgets" => ResourceKind::Budget,
        _ => return None,
    })
}

/// The Config section holding `kind` (`providers`, `routes`, ...).
pub fn section(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Unspecified => "",
        ResourceKind::Provider => "providers",
        ResourceKind::Route => "routes",
        ResourceKind::Price => "prices",
        ResourceKind::Tier => "tiers",
        ResourceKind::Key => "keys",
        ResourceKind::Budget => "budgets",
    }
}

/// Kind of a resource's spec.
pub fn spec_kind(spec: &Spec) -> ResourceKind {
    match spec {
        Spec::Provider(_) => ResourceKind::Provider,
        Spec::Route(_) => ResourceKind::Route,
        Spec::Price(_) => ResourceKind::Price,
        Spec::Tier(_) => ResourceKind::Tier,
        Spec::Key(_) => ResourceKind::Key,
        Spec::Budget(_) => ResourceKind::Budget,
    }
}

/// A request-level problem (maps to INVALID_ARGUMENT / NOT_FOUND).
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    #[error("{0}")]
    Invalid(String),
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
}

/// Creates or replaces one resource in `cfg`.
pub fn apply_resource(cfg: &mut Config, res: Resource) -> Result<(), ResourceError> {
    let Resource { name, spec } = res;
    let spec = spec.ok_or_else(|| ResourceError::Invalid("resource has no spec".into()))?;
    let need_name = |name: &str| {
        if name.is_empty() {
            Err(ResourceError::Invalid(
                "resource name must not be empty".into(),
            ))
        } else {
            Ok(())
        }
    };
    match spec {
        Spec::Provider(p) => {
            need_name(&name)?;
            cfg.providers.insert(name, p);
        }
        Spec::Route(r) => {
            need_name(&name)?;
            cfg.routes.insert(name, r);
        }
        Spec::Price(p) => {
            need_name(&name)?;
            cfg.prices.insert(name, p);
        }
        Spec::Tier(t) => {
            need_name(&name)?;
            cfg.tiers.insert(name, t);
        }
        Spec::Key(mut k) => {
            if k.id.is_empty() {
                k.id = name;
            } else if !name.is_empty() && name != k.id {
                return Err(ResourceError::Invalid(format!(
                    "name {name:?} does not match key id {:?}",
                    k.id
                )));
            }
            need_name(&k.id)?;
            match cfg.keys.iter_mut().find(|x| x.id == k.id) {
                Some(slot) => *slot = k,
                None => cfg.keys.push(k),
            }
        }
        Spec::Budget(mut b) => {
            if b.name.is_empty() {
                b.name = name;
            } else if !name.is_empty() && name != b.name {
                return Err(ResourceError::Invalid(format!(
                    "name {name:?} does not match budget name {:?}",
                    b.name
                )));
            }
            need_name(&b.name)?;
            match cfg.budgets.iter_mut().find(|x| x.name == b.name) {
                Some(slot) => *slot = b,
                None => cfg.budgets.push(b),
            }
        }
    }
    Ok(())
}

/// Removes one resource from `cfg`.
pub fn delete_resource(
    cfg: &mut Config,
    kind: ResourceKind,
    name: &str,
) -> Result<(), ResourceError> {
    let found = match kind {
        ResourceKind::Unspecified => {
            return Err(ResourceError::Invalid("resource kind must be set".into()))
        }
        ResourceKind::Provider => cfg.providers.remove(name).is_some(),
        ResourceKind::Route => cfg.routes.remove(name).is_some(),
        ResourceKind::Price => cfg.prices.remove(name).is_some(),
        ResourceKind::Tier => cfg.tiers.remove(name).is_some(),
        ResourceKind::Key => {
            let n = cfg.keys.len();
            cfg.keys.retain(|k| k.id != name);
            cfg.keys.len() != n
        }
        ResourceKind::Budget => {
            let n = cfg.budgets.len();
            cfg.budgets.retain(|b| b.name != name);
            cfg.budgets.len() != n
        }
    };
    if found {
        Ok(())
    } else {
        Err(ResourceError::NotFound {
            kind: section(kind),
            name: name.to_string(),
        })
    }
}

/// Resources of `kind` (every kind for `Unspecified`), in document order.
pub fn list_resources(cfg: &Config, kind: ResourceKind) -> Vec<ListedResource> {
    let mut out = Vec::new();
    let want = |k: ResourceKind| kind == ResourceKind::Unspecified || kind == k;
    let mut push = |k: ResourceKind, name: &str, spec: Spec| {
        out.push(ListedResource {
            kind: k as i32,
            resource: Some(Resource {
                name: name.to_string(),
                spec: Some(spec),
            }),
        })
    };
    if want(ResourceKind::Provider) {
        for (n, p) in &cfg.providers {
            push(ResourceKind::Provider, n, Spec::Provider(p.clone()));
        }
    }
    if want(ResourceKind::Route) {
        for (n, r) in &cfg.routes {
            push(ResourceKind::Route, n, Spec::Route(r.clone()));
        }
    }
    if want(ResourceKind::Price) {
        for (n, p) in &cfg.prices {
            push(ResourceKind::Price, n, Spec::Price(*p));
        }
    }
    if want(ResourceKind::Tier) {
        for (n, t) in &cfg.tiers {
            push(ResourceKind::Tier, n, Spec::Tier(*t));
        }
    }
    if want(ResourceKind::Key) {
        for k in &cfg.keys {
            push(ResourceKind::Key, &k.id, Spec::Key(k.clone()));
        }
    }
    if want(ResourceKind::Budget) {
        for b in &cfg.budgets {
            push(ResourceKind::Budget, &b.name, Spec::Budget(b.clone()));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Compact JSON rendering
// ---------------------------------------------------------------------------

const MAP_SECTIONS: [&str; 4] = ["providers", "routes", "prices", "tiers"];
const LIST_SECTIONS: [(&str, &str); 2] = [("keys", "id"), ("budgets", "name")];

fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// Removes zero-valued fields everywhere (may change meaning of `optional`
/// scalars and present-but-empty messages; callers verify).
fn prune_all(v: &mut Value) {
    match v {
        Value::Object(o) => {
            for child in o.values_mut() {
                prune_all(child);
            }
            o.retain(|_, c| !is_zero(c));
        }
        Value::Array(a) => a.iter_mut().for_each(prune_all),
        _ => {}
    }
}

/// Removes only what never carries meaning: nulls (unset options) and empty
/// lists.
fn prune_safe(v: &mut Value) {
    match v {
        Value::Object(o) => {
            for child in o.values_mut() {
                prune_safe(child);
            }
            o.retain(|_, c| !(c.is_null() || c.as_array().is_some_and(|a| a.is_empty())));
        }
        Value::Array(a) => a.iter_mut().for_each(prune_safe),
        _ => {}
    }
}

/// A step into a JSON value: object member or array element.
#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Idx(usize),
}

/// Paths of every object member below `v` (through arrays), children
/// before their parents.
fn member_paths(v: &Value, path: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    match v {
        Value::Object(o) => {
            for (k, c) in o {
                path.push(Seg::Key(k.clone()));
                member_paths(c, path, out);
                out.push(path.clone());
                path.pop();
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                path.push(Seg::Idx(i));
                member_paths(c, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn step_mut<'a>(v: &'a mut Value, s: &Seg) -> Option<&'a mut Value> {
    match s {
        Seg::Key(k) => v.as_object_mut()?.get_mut(k),
        Seg::Idx(i) => v.as_array_mut()?.get_mut(*i),
    }
}

fn remove_at(v: &mut Value, path: &[Seg]) -> Option<Value> {
    let (last, parents) = path.split_last()?;
    let mut cur = v;
    for p in parents {
        cur = step_mut(cur, p)?;
    }
    match last {
        Seg::Key(k) => cur.as_object_mut()?.remove(k),
        Seg::Idx(_) => None,
    }
}

fn get_at<'a>(v: &'a Value, path: &[Seg]) -> Option<&'a Value> {
    let mut cur = v;
    for p in path {
        cur = match p {
            Seg::Key(k) => cur.as_object()?.get(k)?,
            Seg::Idx(i) => cur.as_array()?.get(*i)?,
        };
    }
    Some(cur)
}

/// Prunes `full` (one resource) as far as possible while `same(candidate)`
/// holds, i.e. while the pruned value still means the same thing.
fn prune_verified(full: &Value, same: impl Fn(&Value) -> bool) -> Value {
    let mut fast = full.clone();
    prune_all(&mut fast);
    if same(&fast) {
        return fast;
    }
    let mut cand = full.clone();
    prune_safe(&mut cand);
    let mut paths = Vec::new();
    member_paths(&cand, &mut Vec::new(), &mut paths);
    for p in paths {
        if !get_at(&cand, &p).is_some_and(is_zero) {
            continue;
        }
        let mut next = cand.clone();
        remove_at(&mut next, &p);
        if same(&next) {
            cand = next;
        }
    }
    cand
}

fn parse_doc(v: Value) -> Option<Config> {
    serde_json::from_value(v).ok()
}

/// The document as JSON with every field that carries no meaning left out
/// (the YAML written by `switchyard-ctl get` is this). Round-trips: parsing
/// the result gives back exactly `cfg`.
pub fn compact_json(cfg: &Config) -> Value {
    let Ok(Value::Object(full)) = serde_json::to_value(cfg) else {
        return Value::Null;
    };
    let mut out = Map::new();
    for (section, value) in full {
        let wrap = |v: Value| -> Value { Value::Object(Map::from_iter([(section.clone(), v)])) };
        let compact = if MAP_SECTIONS.contains(&section.as_str()) {
            let Value::Object(entries) = value else {
                continue;
            };
            let mut m = Map::new();
            for (name, v) in entries {
                let wrap1 =
                    |c: &Value| wrap(Value::Object(Map::from_iter([(name.clone(), c.clone())])));
                let orig = parse_doc(wrap1(&v));
                let c = prune_verified(&v, |c| parse_doc(wrap1(c)) == orig);
                m.insert(name, c);
            }
            Value::Object(m)
        } else if LIST_SECTIONS.iter().any(|(s, _)| *s == section) {
            let Value::Array(items) = value else { continue };
            let items = items
                .into_iter()
                .map(|v| {
                    let wrap1 = |c: &Value| wrap(Value::Array(vec![c.clone()]));
                    let orig = parse_doc(wrap1(&v));
                    prune_verified(&v, |c| parse_doc(wrap1(c)) == orig)
                })
                .collect();
            Value::Array(items)
        } else {
            let orig = parse_doc(wrap(value.clone()));
            let c = prune_verified(
                &Value::Object(Map::from_iter([(section.clone(), value)])),
                |c| parse_doc(c.clone()) == orig,
            );
            match c {
                Value::Object(mut o) => match o.remove(&section) {
                    Some(v) => v,
                    None => continue,
                },
                _ => continue,
            }
        };
        if !is_zero(&compact)
            || !parse_doc(wrap(compact.clone())).is_some_and(|c| c == Config::default())
        {
            out.insert(section, compact);
        }
    }
    Value::Object(out)
}

/// Compact YAML of the whole document.
pub fn to_yaml(cfg: &Config) -> String {
    yaml_of(&compact_json(cfg))
}

/// YAML rendering of a JSON value ("{}" for an empty document).
pub fn yaml_of(v: &Value) -> String {
    serde_yaml::to_string(v).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
}

/// Compact JSON of one section (`kind`) or one resource of it (`name`).
pub fn compact_resource(cfg: &Config, kind: ResourceKind, name: Option<&str>) -> Option<Value> {
    let doc = compact_json(cfg);
    let sec = section(kind);
    let value = doc.get(sec).cloned().unwrap_or_else(|| match kind {
        ResourceKind::Key | ResourceKind::Budget => Value::Array(vec![]),
        _ => Value::Object(Map::new()),
    });
    let Some(name) = name else { return Some(value) };
    match value {
        Value::Object(mut o) => o.remove(name),
        Value::Array(a) => {
            let field = LIST_SECTIONS
                .iter()
                .find(|(s, _)| *s == sec)
                .map(|(_, f)| *f)?;
            a.into_iter()
                .find(|v| v.get(field).and_then(Value::as_str) == Some(name))
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Diff
// ---------------------------------------------------------------------------

/// A structured diff plus its one-line summary.
#[derive(Debug, Default, Clone)]
pub struct Diff {
    pub entries: Vec<DiffEntry>,
    pub summary: String,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Keys and budgets keyed by id/name so changes are addressed by identity.
fn diffable(cfg: &Config) -> Map<String, Value> {
    let Value::Object(mut doc) = compact_json(cfg) else {
        return Map::new();
    };
    for (sec, field) in LIST_SECTIONS {
        if let Some(Value::Array(items)) = doc.remove(sec) {
            let mut m = Map::new();
            for item in items {
                let base = item
                    .get(field)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let mut key = base.clone();
                let mut n = 1;
                while m.contains_key(&key) {
                    n += 1;
                    key = format!("{base}#{n}");
                }
                m.insert(key, item);
            }
            doc.insert(sec.to_string(), Value::Object(m));
        }
    }
    doc
}

fn render(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn entry(
    change: ChangeType,
    path: &str,
    before: Option<&Value>,
    after: Option<&Value>,
) -> DiffEntry {
    DiffEntry {
        change: change as i32,
        path: path.to_string(),
        before: before.map(render).unwrap_or_default(),
        after: after.map(render).unwrap_or_default(),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn diff_values(path: &str, a: &Value, b: &Value, out: &mut Vec<DiffEntry>) {
    if a == b {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = join(path, k);
                match (x.get(k), y.get(k)) {
                    (Some(va), Some(vb)) => diff_values(&p, va, vb, out),
                    (None, Some(vb)) => out.push(entry(ChangeType::Added, &p, None, Some(vb))),
                    (Some(va), None) => out.push(entry(ChangeType::Removed, &p, Some(va), None)),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            for i in 0..x.len().max(y.len()) {
                let p = format!("{path}[{i}]");
                match (x.get(i), y.get(i)) {
                    (Some(va), Some(vb)) => diff_values(&p, va, vb, out),
                    (None, Some(vb)) => out.push(entry(ChangeType::Added, &p, None, Some(vb))),
                    (Some(va), None) => out.push(entry(ChangeType::Removed, &p, Some(va), None)),
                    (None, None) => {}
                }
            }
        }
        _ => out.push(entry(ChangeType::Modified, path, Some(a), Some(b))),
    }
}

/// What changes going from `before` to `after`.
pub fn diff(before: &Config, after: &Config) -> Diff {
    let a = diffable(before);
    let b = diffable(after);
    let mut entries = Vec::new();
    let mut summary = Vec::new();
    let sections: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for sec in sections {
        let va = a.get(sec.as_str());
        let vb = b.get(sec.as_str());
        if va == vb {
            continue;
        }
        let resources =
            MAP_SECTIONS.contains(&sec.as_str()) || LIST_SECTIONS.iter().any(|(s, _)| s == sec);
        if !resources {
            match (va, vb) {
                (Some(x), Some(y)) => diff_values(sec, x, y, &mut entries),
                (None, Some(y)) => entries.push(entry(ChangeType::Added, sec, None, Some(y))),
                (Some(x), None) => entries.push(entry(ChangeType::Removed, sec, Some(x), None)),
                (None, None) => {}
            }
            summary.push(format!("{sec}: ~"));
            continue;
        }
        let oa = va.and_then(Value::as_object).unwrap_or(&EMPTY_MAP);
        let ob = vb.and_then(Value::as_object).unwrap_or(&EMPTY_MAP);
        let (mut added, mut removed, mut modified) = (0, 0, 0);
        let names: std::collections::BTreeSet<&String> = oa.keys().chain(ob.keys()).collect();
        for name in names {
            let p = join(sec, name);
            match (oa.get(name.as_str()), ob.get(name.as_str())) {
                (Some(x), Some(y)) if x != y => {
                    modified += 1;
                    diff_values(&p, x, y, &mut entries);
                }
                (None, Some(y)) => {
                    added += 1;
                    entries.push(entry(ChangeType::Added, &p, None, Some(y)));
                }
                (Some(x), None) => {
                    removed += 1;
                    entries.push(entry(ChangeType::Removed, &p, Some(x), None));
                }
                _ => {}
            }
        }
        let mut parts = Vec::new();
        if added > 0 {
            parts.push(format!("+{added}"));
        }
        if removed > 0 {
            parts.push(format!("-{removed}"));
        }
        if modified > 0 {
            parts.push(format!("~{modified}"));
        }
        summary.push(format!("{sec}: {}", parts.join(" ")));
    }
    Diff {
        entries,
        summary: summary.join("; "),
    }
}

static EMPTY_MAP: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);

/// One line per change: `+ path: json`, `- path`, `~ path: before -> after`.
pub fn render_text(entries: &[DiffEntry]) -> String {
    let mut s = String::new();
    for e in entries {
        match ChangeType::try_from(e.change).unwrap_or(ChangeType::Unspecified) {
            ChangeType::Added => s.push_str(&format!("+ {}: {}\n", e.path, e.after)),
            ChangeType::Removed => s.push_str(&format!("- {}: {}\n", e.path, e.before)),
            _ => s.push_str(&format!("~ {}: {} -> {}\n", e.path, e.before, e.after)),
        }
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn cfg(yaml: &str) -> Config {
        config::from_yaml_str(yaml, |_| None).unwrap()
    }

    const BASE: &str = "providers:\n  p: {kind: openai, base_url: 'http://127.0.0.1:1/v1'}\nroutes:\n  chat:\n    targets: [{provider: p, model: x}]\n    retry: {max_retries: 0}\n";

    #[test]
    fn compact_yaml_round_trips_including_optional_zeroes() {
        let mut c = cfg(BASE);
        c.require_keys = Some(false);
        c.routes.get_mut("chat").unwrap().timeouts = Some(Default::default());
        let y = to_yaml(&c);
        assert!(!y.contains("weight"), "{y}");
        assert!(y.contains("timeouts: {}"), "{y}");
        assert!(y.contains("max_retries: 0"), "{y}");
        assert!(y.contains("require_keys: false"), "{y}");
        assert!(!y.contains("load_balancing"), "{y}");
        let back = cfg(&y);
        assert_eq!(back, c, "{y}");
    }

    #[test]
    fn empty_config_is_empty_yaml() {
        assert_eq!(compact_json(&Config::default()), Value::Object(Map::new()));
    }

    #[test]
    fn diff_addresses_resources_by_name() {
        let a = cfg(BASE);
        let mut b = a.clone();
        b.routes.get_mut("chat").unwrap().targets[0].model = "y".into();
        b.providers.insert("q".into(), b.providers["p"].clone());
        b.keys.push(switchyard_proto::config::ApiKey {
            id: "k1".into(),
            secret: "s".into(),
            ..Default::default()
        });
        normalize(&mut b).unwrap();
        let d = diff(&a, &b);
        let paths: Vec<_> = d.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            vec!["keys.k1", "providers.q", "routes.chat.targets[0].model"]
        );
        assert_eq!(d.summary, "keys: +1; providers: +1; routes: ~1");
        assert!(render_text(&d.entries).contains("~ routes.chat.targets[0].model: \"x\" -> \"y\""));
        assert!(diff(&a, &a).is_empty());
    }

    #[test]
    fn normalize_hashes_secrets() {
        let mut c = Config::default();
        c.keys.push(switchyard_proto::config::ApiKey {
            id: "k".into(),
            secret: "abc".into(),
            ..Default::default()
        });
        normalize(&mut c).unwrap();
        assert!(c.keys[0].secret.is_empty());
        assert_eq!(c.keys[0].secret_sha256, config::sha256_hex(b"abc"));
        c.keys[0].secret = "other".into();
        let errs = normalize(&mut c).unwrap_err();
        assert_eq!(errs[0].path, "keys[0].secret_sha256");
    }

    #[test]
    fn envelope_round_trips_and_detects_corruption() {
        let c = cfg(BASE);
        let env = envelope(
            7,
            &c,
            EnvelopeMeta {
                author: "a".into(),
                ..Default::default()
            },
        );
        let (e2, c2) = decode_envelope(&env.encode_to_vec()).unwrap();
        assert_eq!((e2.version, c2), (7, c));
        let mut bad = env.clone();
        bad.config[0] ^= 1;
        assert!(decode_config(&bad).is_err());
    }

    #[test]
    fn resources_merge_and_delete() {
        let mut c = cfg(BASE);
        let key = switchyard_proto::config::ApiKey {
            id: "k".into(),
            tier: "t".into(),
            ..Default::default()
        };
        apply_resource(
            &mut c,
            Resource {
                name: String::new(),
                spec: Some(Spec::Key(key.clone())),
            },
        )
        .unwrap();
        apply_resource(
            &mut c,
            Resource {
                name: "k".into(),
                spec: Some(Spec::Key(key)),
            },
        )
        .unwrap();
        assert_eq!(c.keys.len(), 1);
        assert!(matches!(
            delete_resource(&mut c, ResourceKind::Route, "nope"),
            Err(ResourceError::NotFound { .. })
        ));
        delete_resource(&mut c, ResourceKind::Key, "k").unwrap();
        assert!(c.keys.is_empty());
        assert_eq!(list_resources(&c, ResourceKind::Unspecified).len(), 2);
    }
}
