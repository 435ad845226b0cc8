//! The environment the relay reads: credentials and endpoints (`SFMC_*`), write keys,
//! Kafka settings (`SFMC_RELAY_KAFKA_*`) and the `${NAME}` values of rule files.
//!
//! One type for every lookup: the process environment in production, a map in tests (and
//! a map over the process environment for a golden case's `env` file). Cheap to clone.

use std::collections::HashMap;
use std::sync::Arc;

/// Where environment variables come from.
#[derive(Clone, Default)]
pub struct Env {
    /// Looked up first.
    vars: Arc<HashMap<String, String>>,
    /// Then the process environment, unless the map is all there is.
    process: Fallback,
}

#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum Fallback {
    #[default]
    Process,
    None,
}

impl Env {
    /// The process environment.
    pub fn process() -> Env {
        Env::default()
    }

    /// Only these variables (nothing from the process environment).
    pub fn from_map<K: Into<String>, V: Into<String>>(
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Env {
        Env {
            vars: Arc::new(
                vars.into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
            ),
            process: Fallback::None,
        }
    }

    /// No variables at all.
    pub fn empty() -> Env {
        Env::from_map(std::iter::empty::<(String, String)>())
    }

    /// `vars` in front of this environment (they win; the rest is looked up as before).
    pub fn with_overrides<K: Into<String>, V: Into<String>>(
        &self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Env {
        let mut map = (*self.vars).clone();
        map.extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        Env {
            vars: Arc::new(map),
            process: self.process,
        }
    }

    /// The value of `name`, if set (and valid Unicode).
    pub fn get(&self, name: &str) -> Option<String> {
        match self.vars.get(name) {
            Some(v) => Some(v.clone()),
            None if self.process == Fallback::Process => std::env::var(name).ok(),
            None => None,
        }
    }

    /// Every variable (the overrides win over the process environment), sorted by name.
    pub fn vars(&self) -> Vec<(String, String)> {
        let mut all: std::collections::BTreeMap<String, String> = match self.process {
            Fallback::Process => std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
            Fallback::None => Default::default(),
        };
        all.extend(self.vars.iter().map(|(k, v)| (k.clone(), v.clone())));
        all.into_iter().collect()
    }
}

impl std::fmt::Debug for Env {
    /// Names only: values may be secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.vars.keys().collect();
        names.sort();
        f.debug_struct("Env")
            .field("overrides", &names)
            .field("process", &(self.process == Fallback::Process))
            .finish()
    }
}

impl From<HashMap<String, String>> for Env {
    /// Only these variables.
    fn from(vars: HashMap<String, String>) -> Env {
        Env {
            vars: Arc::new(vars),
            process: Fallback::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_is_all_there_is() {
        let env = Env::from_map([("A", "1")]);
        assert_eq!(env.get("A").as_deref(), Some("1"));
        assert_eq!(env.get("PATH"), None);
        assert_eq!(env.vars(), vec![("A".to_string(), "1".to_string())]);
        assert_eq!(Env::empty().get("PATH"), None);
    }

    #[test]
    fn overrides_win_over_the_process_environment() {
        // PATH is set in every test environment.
        let path = std::env::var("PATH").expect("PATH is set");
        let env = Env::process().with_overrides([("PATH", "/nowhere")]);
        assert_eq!(env.get("PATH").as_deref(), Some("/nowhere"));
        assert_eq!(Env::process().get("PATH"), Some(path));
        let vars = env.vars();
        assert!(vars.contains(&("PATH".into(), "/nowhere".into())));
        assert_eq!(vars.iter().filter(|(k, _)| k == "PATH").count(), 1);
    }

    #[test]
    fn debug_never_shows_values() {
        let env = Env::from_map([("SFMC_CLIENT_SECRET", "hunter2")]);
        let shown = format!("{env:?}");
        assert!(shown.contains("SFMC_CLIENT_SECRET") && !shown.contains("hunter2"));
    }
}
