use super::Config;

/// Why a YAML document could not be turned into a [`Config`].
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// `${NAME}` referenced an environment variable that is not set.
    #[error("environment variable `{name}` referenced at line {line} is not set")]
    MissingEnv { name: String, line: usize },
    /// `${` without a closing `}` or with an invalid name.
    #[error("malformed `${{...}}` reference at line {line}")]
    BadReference { line: usize },
    /// The YAML did not match the schema; `path` names the offending field.
    #[error("{path}: {message}")]
    Schema { path: String, message: String },
}

/// Replaces every `${NAME}` in `text` using `lookup`. `$${` is a literal `${`.
pub fn expand_env(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, LoadError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("${") {
        let line = text.len() - rest.len() + pos;
        let line = text[..line].matches('\n').count() + 1;
        if pos > 0 && rest.as_bytes()[pos - 1] == b'$' {
            out.push_str(&rest[..pos - 1]);
            out.push_str("${");
            rest = &rest[pos + 2..];
            continue;
        }
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 2..];
        let end = after.find('}').ok_or(LoadError::BadReference { line })?;
        let name = &after[..end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(LoadError::BadReference { line });
        }
        let value = lookup(name).ok_or_else(|| LoadError::MissingEnv {
            name: name.to_string(),
            line,
        })?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Parses a YAML config document after expanding `${NAME}` references with
/// `lookup` (pass `|n| std::env::var(n).ok()` for the process environment).
/// Errors name the path of the offending field, e.g. `routes.chat.targets[0].weight`.
pub fn from_yaml_str(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Config, LoadError> {
    let expanded = expand_env(text, lookup)?;
    if expanded.trim().is_empty() {
        return Ok(Config::default());
    }
    let de = serde_yaml::Deserializer::from_str(&expanded);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        LoadError::Schema {
            path: if path == "." {
                "(document)".into()
            } else {
                path
            },
            message,
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn expands_env_and_reports_missing() {
        let got = expand_env("a: ${X}\nb: $${Y}", |n| (n == "X").then(|| "1".into())).unwrap();
        assert_eq!(got, "a: 1\nb: ${Y}");
        let err = expand_env("a: 1\nb: ${NOPE}", |_| None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment variable `NOPE` referenced at line 2 is not set"
        );
        assert!(matches!(
            expand_env("${a-b}", |_| None),
            Err(LoadError::BadReference { .. })
        ));
    }

    #[test]
    fn unknown_field_names_its_path() {
        let yaml = "routes:\n  chat:\n    targets:\n      - provider: p\n        modle: x\n";
        let err = from_yaml_str(yaml, |_| None).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("routes.chat.targets[0]"), "{msg}");
        assert!(msg.contains("modle"), "{msg}");
    }

    #[test]
    fn wrong_type_names_its_path() {
        let yaml = "routes:\n  chat:\n    targets:\n      - provider: p\n        weight: heavy\n";
        let msg = from_yaml_str(yaml, |_| None).unwrap_err().to_string();
        assert!(msg.starts_with("routes.chat.targets[0].weight"), "{msg}");
    }
}
