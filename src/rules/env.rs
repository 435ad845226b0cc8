//! `${NAME}` / `${NAME:-default}` interpolation in rule values.
//!
//! Interpolation happens on parsed string values (never on raw YAML text), so an
//! environment value can never change the structure of a rule file. `$${` writes a
//! literal `${`.

use crate::env::Env;

/// Replace every `${NAME}` and `${NAME:-default}` in `input`.
///
/// `${NAME:-default}` uses the default when NAME is unset or empty (as in POSIX shells);
/// `${NAME}` with NAME unset is an error that says how to give a default.
pub fn interpolate(input: &str, env: &Env) -> Result<String, String> {
    if !input.contains('$') {
        return Ok(input.to_string());
    }
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(stripped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = stripped;
            continue;
        }
        if !after.starts_with("${") {
            out.push('$');
            rest = &after[1..];
            continue;
        }
        let body_start = 2;
        let Some(end) = after[body_start..].find('}') else {
            return Err(format!(
                "unterminated `${{` in {input:?}: expected `${{NAME}}` or `${{NAME:-default}}`"
            ));
        };
        let body = &after[body_start..body_start + end];
        let (name, default) = match body.find(":-") {
            Some(i) => (&body[..i], Some(&body[i + 2..])),
            None => (body, None),
        };
        if !is_var_name(name) {
            return Err(format!(
                "invalid variable name {name:?} in {input:?}: expected letters, digits and `_`, not starting with a digit"
            ));
        }
        if is_secret_var(name) {
            return Err(format!(
                "environment variable {name} holds a secret and cannot be used in rules \
(rule values end up in URLs, logs and `check`/`explain` output)"
            ));
        }
        match (env.get(name), default) {
            (Some(v), Some(d)) if v.is_empty() => out.push_str(d),
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(format!(
                    "environment variable {name} is not set (write `${{{name}:-default}}` to give a default)"
                ));
            }
        }
        rest = &after[body_start + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Variables holding secrets (the SFMC client secret, the ingest write keys, and anything
/// named like a secret): never interpolated into rules.
pub fn is_secret_var(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    matches!(
        upper.as_str(),
        "SFMC_CLIENT_SECRET" | "SFMC_RELAY_WRITE_KEYS"
    ) || ["SECRET", "PASSWORD", "TOKEN", "WRITE_KEY"]
        .iter()
        .any(|w| upper.contains(w))
}

fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Env {
        Env::from_map([("DE", "orders"), ("EMPTY", "")])
    }

    #[test]
    fn plain_text_is_unchanged() {
        assert_eq!(interpolate("Order Id", &vars()).unwrap(), "Order Id");
        assert_eq!(interpolate("costs $5", &vars()).unwrap(), "costs $5");
    }

    #[test]
    fn set_variable_is_substituted() {
        assert_eq!(interpolate("${DE}", &vars()).unwrap(), "orders");
        assert_eq!(interpolate("key-${DE}-x", &vars()).unwrap(), "key-orders-x");
        assert_eq!(interpolate("${DE:-other}", &vars()).unwrap(), "orders");
    }

    #[test]
    fn default_used_when_unset_or_empty() {
        assert_eq!(
            interpolate("${NOPE:-fallback}", &vars()).unwrap(),
            "fallback"
        );
        assert_eq!(
            interpolate("${EMPTY:-fallback}", &vars()).unwrap(),
            "fallback"
        );
        assert_eq!(interpolate("${NOPE:-}", &vars()).unwrap(), "");
        assert_eq!(interpolate("${EMPTY}", &vars()).unwrap(), "");
    }

    #[test]
    fn unset_without_default_is_an_error_naming_the_variable() {
        let e = interpolate("${NOPE}", &vars()).unwrap_err();
        assert!(e.contains("NOPE is not set"), "{e}");
        assert!(e.contains("${NOPE:-default}"), "{e}");
    }

    #[test]
    fn secrets_are_never_interpolated() {
        let names = [
            "SFMC_CLIENT_SECRET",
            "SFMC_RELAY_WRITE_KEYS",
            "MY_API_TOKEN",
            "db_password",
            "SFMC_CLIENT_ID",
        ];
        let env = Env::from_map(names.map(|n| (n, "hunter2")));
        for name in [
            "SFMC_CLIENT_SECRET",
            "SFMC_RELAY_WRITE_KEYS",
            "MY_API_TOKEN",
            "db_password",
        ] {
            let e = interpolate(&format!("x-${{{name}:-d}}"), &env).unwrap_err();
            assert!(e.contains(name) && e.contains("secret"), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
        assert_eq!(interpolate("${SFMC_CLIENT_ID}", &env).unwrap(), "hunter2");
    }

    #[test]
    fn escapes_and_malformed() {
        assert_eq!(interpolate("$${DE}", &vars()).unwrap(), "${DE}");
        assert!(
            interpolate("${DE", &vars())
                .unwrap_err()
                .contains("unterminated")
        );
        assert!(
            interpolate("${1X}", &vars())
                .unwrap_err()
                .contains("invalid variable name")
        );
        assert!(interpolate("${}", &vars()).is_err());
    }
}
