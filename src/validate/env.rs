//! `${VAR}` expansion in configuration strings.
//!
//! `${NAME}` takes the variable from the environment and it is an error for it to
//! be unset; `${NAME:-default}` falls back to `default`; `$$` is a literal `$`.
//! Anything else with a `$` is left as written, so URLs and tokens that contain a
//! lone `$` need no escaping.

/// Why a string could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpandError {
    /// `${NAME}` with `NAME` unset and no default.
    Unset { name: String, offset: usize },
    /// `${` without its closing `}`.
    Unclosed { offset: usize },
}

/// Expands `${VAR}` references in `text` using `lookup`.
pub fn expand(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, ExpandError> {
    if !text.contains('$') {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let offset = text.len() - rest.len() + dollar;
            let close = body.find('}').ok_or(ExpandError::Unclosed { offset })?;
            let reference = &body[..close];
            let (name, default) = match reference.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (reference, None),
            };
            match lookup(name).or_else(|| default.map(str::to_owned)) {
                Some(value) => out.push_str(&value),
                None => {
                    return Err(ExpandError::Unset {
                        name: name.to_owned(),
                        offset,
                    })
                }
            }
            rest = &body[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "TOKEN").then(|| "s3cret".to_owned())
    }

    #[test]
    fn expands_defaults_and_escapes() {
        assert_eq!(expand("Bearer ${TOKEN}", env).unwrap(), "Bearer s3cret");
        assert_eq!(expand("${MISSING:-x}/${TOKEN}", env).unwrap(), "x/s3cret");
        assert_eq!(expand("cost $$5 and $x", env).unwrap(), "cost $5 and $x");
        assert_eq!(expand("plain", env).unwrap(), "plain");
    }

    #[test]
    fn reports_unset_and_unclosed_with_offsets() {
        assert_eq!(
            expand("a ${NOPE} b", env),
            Err(ExpandError::Unset {
                name: "NOPE".into(),
                offset: 2
            })
        );
        assert_eq!(
            expand("ab${TOKEN", env),
            Err(ExpandError::Unclosed { offset: 2 })
        );
    }
}
