//! Simulator configuration, loaded from YAML (`serde_saphyr`) or built in code.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// Everything the simulator needs to know. Every field has a default, so an empty YAML
/// document (or `SimConfig::default()`) is a permissive SFMC that accepts any credentials,
/// any data extension and any API event.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    /// Token lifetime in seconds (`expires_in` / `expiresIn`).
    pub token_lifetime: u64,
    /// Accepted credentials. Empty = accept any non-empty id and secret.
    pub clients: Vec<ClientCredentials>,
    /// What to do with rows for a data extension that is not declared below.
    pub unknown_data_extensions: UnknownDataExtensions,
    /// Declared data extensions, by external key (matched case-insensitively).
    pub data_extensions: BTreeMap<String, DataExtensionConfig>,
    /// Known Journey Builder EventDefinitionKeys whose `Data` is not checked. Empty (and
    /// no `event_definitions`) = accept any key.
    pub api_events: Vec<String>,
    /// Event definitions with their data extension fields: `Data` (sync and async) may
    /// only hold these fields (case-insensitively), with values of these types.
    pub event_definitions: BTreeMap<String, EventDefinitionConfig>,
    /// Primary-key values compared case-insensitively when matching rows for upsert
    /// (SQL Server's default collation is case-insensitive). Off by default.
    pub case_insensitive_key_values: bool,
    /// Maximum request body size in bytes for REST calls (SFMC documents 5 MB).
    pub max_body_bytes: usize,
    /// At most this many entries are kept in the upsert log (`GET /sim/log`); later
    /// upserts are still applied and counted in `stats.log_dropped`.
    pub log_limit: usize,
    /// Fault injection.
    pub faults: Faults,
    /// The asynchronous rows API (`/data/v1/async/...`): delays, limits, deadlocks.
    pub async_rows: AsyncRowsConfig,
    /// `POST /contacts/v1/establish`.
    pub establish: EstablishConfig,
    /// `POST /interaction/v1/async/events`.
    pub async_events: AsyncEventsConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            token_lifetime: 1079,
            clients: Vec::new(),
            unknown_data_extensions: UnknownDataExtensions::Accept,
            data_extensions: BTreeMap::new(),
            api_events: Vec::new(),
            event_definitions: BTreeMap::new(),
            case_insensitive_key_values: false,
            max_body_bytes: 5_000_000,
            log_limit: 1_000_000,
            faults: Faults::default(),
            async_rows: AsyncRowsConfig::default(),
            establish: EstablishConfig::default(),
            async_events: AsyncEventsConfig::default(),
        }
    }
}

impl SimConfig {
    /// Parse and validate a YAML document.
    pub fn from_yaml(text: &str) -> anyhow::Result<Self> {
        let config: SimConfig = if text.trim().is_empty() {
            SimConfig::default()
        } else {
            serde_saphyr::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?
        };
        config.validate()?;
        Ok(config)
    }

    /// Read, parse and validate a YAML file.
    pub fn from_file(path: impl AsRef<Path>) -> anyhow::Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading simulator config {}", path.display()))?;
        Self::from_yaml(&text)
            .with_context(|| format!("parsing simulator config {}", path.display()))
    }

    /// Check cross-field rules that serde cannot express.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut seen = std::collections::HashSet::new();
        for (key, de) in &self.data_extensions {
            if key.trim().is_empty() {
                bail!("data extension with an empty key");
            }
            if !seen.insert(key.to_lowercase()) {
                bail!("data extension `{key}` declared twice (keys are case-insensitive)");
            }
            let mut cols = std::collections::HashSet::new();
            for col in de.columns.keys() {
                if !cols.insert(col.to_lowercase()) {
                    bail!(
                        "data extension `{key}`: column `{col}` declared twice (case-insensitive)"
                    );
                }
            }
            for pk in &de.primary_keys {
                if !cols.contains(&pk.to_lowercase()) {
                    bail!("data extension `{key}`: primary key `{pk}` is not a declared column");
                }
            }
        }
        for (key, def) in &self.event_definitions {
            if key.trim().is_empty() {
                bail!("event definition with an empty key");
            }
            if key.contains('.') {
                bail!(
                    "event definition `{key}`: SFMC does not allow a period in an EventDefinitionKey"
                );
            }
            let mut fields = std::collections::HashSet::new();
            for field in def.fields.keys() {
                if !fields.insert(field.to_lowercase()) {
                    bail!(
                        "event definition `{key}`: field `{field}` declared twice (case-insensitive)"
                    );
                }
            }
        }
        self.faults.validate()?;
        self.async_rows.validate()?;
        if self.establish.max_keys == 0 {
            bail!("establish.max_keys must be at least 1");
        }
        if self.async_events.max_members == 0 {
            bail!("async_events.max_members must be at least 1");
        }
        Ok(())
    }
}

/// A Journey Builder event definition and the fields of its data extension.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventDefinitionConfig {
    /// Field name -> type (as for data extension columns). A `Data` member that is not
    /// one of these (compared case-insensitively) is refused.
    pub fields: BTreeMap<String, ColumnType>,
}

/// How the simulated asynchronous rows API behaves. A request is accepted at once (202),
/// answers "status not found" to its first `status_not_found_polls` status calls, is
/// `Pending` for the first half of its delay and `Executing` for the second, and is
/// applied (its rows saved) when its delay has passed: the delay is drawn uniformly
/// from `min_delay_ms..=max_delay_ms` for each request, so requests finish in no fixed
/// order.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AsyncRowsConfig {
    pub min_delay_ms: u64,
    pub max_delay_ms: u64,
    /// Status calls answered without a status (`AsyncRequestStatusNotFound`) after submit.
    pub status_not_found_polls: u32,
    /// Most items in one request (SFMC: 32,000, a hard limit).
    pub max_rows: usize,
    /// Largest `$pageSize` honoured by the results endpoint (larger asks are capped; the
    /// answer's `pageSize` says what was used). SFMC does not document its maximum.
    pub results_max_page_size: usize,
    /// Fraction of rows that fail with a SQL deadlock ("... Rerun the transaction.").
    pub deadlock_rate: f64,
    /// Fraction of requests that end in `requestStatus: Error` with no row saved.
    pub error_rate: f64,
    /// Seed of the RNG that draws delays, deadlocks and errors.
    pub seed: u64,
    /// For data extensions that are not declared (`unknown_data_extensions: accept`):
    /// the item columns taken as primary keys (case-insensitive), since async items are
    /// flat and do not say which columns are keys. The defaults fit the shipped rules.
    pub undeclared_primary_keys: Vec<String>,
}

impl Default for AsyncRowsConfig {
    fn default() -> Self {
        AsyncRowsConfig {
            min_delay_ms: 50,
            max_delay_ms: 500,
            status_not_found_polls: 1,
            max_rows: 32_000,
            results_max_page_size: 2_500,
            deadlock_rate: 0.0,
            error_rate: 0.0,
            seed: 1,
            undeclared_primary_keys: vec!["Contact Key".into(), "Order Id".into(), "Uuid".into()],
        }
    }
}

impl AsyncRowsConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.min_delay_ms > self.max_delay_ms {
            bail!(
                "async_rows.min_delay_ms ({}) is above async_rows.max_delay_ms ({})",
                self.min_delay_ms,
                self.max_delay_ms
            );
        }
        if self.max_rows == 0 || self.results_max_page_size == 0 {
            bail!("async_rows.max_rows and async_rows.results_max_page_size must be at least 1");
        }
        for (name, rate) in [
            ("deadlock_rate", self.deadlock_rate),
            ("error_rate", self.error_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                bail!("async_rows.{name} must be between 0.0 and 1.0, got {rate}");
            }
        }
        Ok(())
    }
}

/// `POST /contacts/v1/establish` limits. SFMC does not document the largest array.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EstablishConfig {
    /// Most Contact Keys in one call; more is a 400.
    pub max_keys: usize,
}

impl Default for EstablishConfig {
    fn default() -> Self {
        EstablishConfig { max_keys: 1_000 }
    }
}

/// `POST /interaction/v1/async/events` limits.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AsyncEventsConfig {
    /// Most members in one call (SFMC: 100); more is 400 "Interaction Count Limit Exceeded".
    pub max_members: usize,
}

impl Default for AsyncEventsConfig {
    fn default() -> Self {
        AsyncEventsConfig { max_members: 100 }
    }
}

/// One accepted client id / secret pair.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCredentials {
    pub client_id: String,
    pub client_secret: String,
}

/// Policy for rows sent to a data extension key that is not declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownDataExtensions {
    /// Accept any columns; the primary keys are whatever `keys` each row sends.
    #[default]
    Accept,
    /// 400 errorcode 10001 `Parameter key:X is invalid.`
    Reject,
}

/// A declared data extension.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataExtensionConfig {
    /// Primary-key column names (each must be a declared column).
    pub primary_keys: Vec<String>,
    /// Column name -> type, e.g. `Text(50)`, `Number`, `Decimal`, `Boolean`, `Date`,
    /// `EmailAddress`, `Phone`.
    pub columns: BTreeMap<String, ColumnType>,
}

/// An SFMC data extension column type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum ColumnType {
    /// Text with a maximum length in characters (`Text` alone = 4000).
    Text(usize),
    /// 32-bit integer.
    Number,
    /// Decimal; `Decimal(p,s)` limits the integer digits to `p - s`.
    Decimal { precision: u8, scale: u8 },
    /// `true`/`false` (also `1`/`0`, `"true"`/`"false"`, `"1"`/`"0"`, `"Y"`/`"N"`).
    Boolean,
    /// ISO-8601 date or date-time, years 1753-9999.
    Date,
    /// An email address (at most 254 characters).
    EmailAddress,
    /// A phone number (digits, spaces and `+-().`, at most 50 characters).
    Phone,
}

/// Length of `Text` without an explicit length.
pub const DEFAULT_TEXT_LENGTH: usize = 4000;

impl TryFrom<String> for ColumnType {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl std::str::FromStr for ColumnType {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let s = raw.trim();
        let (name, arg) = match s.find('(') {
            Some(open) => {
                let Some(inner) = s[open + 1..].strip_suffix(')') else {
                    return Err(format!("invalid column type `{raw}`"));
                };
                (s[..open].trim(), Some(inner.trim()))
            }
            None => (s, None),
        };
        let lower = name.to_ascii_lowercase();
        let bad = || format!("invalid column type `{raw}`");
        match (lower.as_str(), arg) {
            ("text", None) => Ok(ColumnType::Text(DEFAULT_TEXT_LENGTH)),
            ("text", Some(n)) => {
                let n: usize = n.parse().map_err(|_| bad())?;
                if n == 0 || n > DEFAULT_TEXT_LENGTH {
                    return Err(format!("text length must be 1..=4000 in `{raw}`"));
                }
                Ok(ColumnType::Text(n))
            }
            ("number", None) => Ok(ColumnType::Number),
            ("decimal", None) => Ok(ColumnType::Decimal {
                precision: 18,
                scale: 0,
            }),
            ("decimal", Some(args)) => {
                let (p, s) = args.split_once(',').ok_or_else(bad)?;
                let precision: u8 = p.trim().parse().map_err(|_| bad())?;
                let scale: u8 = s.trim().parse().map_err(|_| bad())?;
                if precision == 0 || precision > 38 || scale > precision {
                    return Err(format!("invalid decimal precision/scale in `{raw}`"));
                }
                Ok(ColumnType::Decimal { precision, scale })
            }
            ("boolean", None) => Ok(ColumnType::Boolean),
            ("date", None) => Ok(ColumnType::Date),
            ("emailaddress" | "email", None) => Ok(ColumnType::EmailAddress),
            ("phone", None) => Ok(ColumnType::Phone),
            _ => Err(format!(
                "unknown column type `{raw}` (expected Text(n), Text, Number, Decimal, Decimal(p,s), Boolean, Date, EmailAddress, Phone)"
            )),
        }
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnType::Text(n) => write!(f, "Text({n})"),
            ColumnType::Number => f.write_str("Number"),
            ColumnType::Decimal { precision, scale } => write!(f, "Decimal({precision},{scale})"),
            ColumnType::Boolean => f.write_str("Boolean"),
            ColumnType::Date => f.write_str("Date"),
            ColumnType::EmailAddress => f.write_str("EmailAddress"),
            ColumnType::Phone => f.write_str("Phone"),
        }
    }
}

impl From<ColumnType> for String {
    fn from(value: ColumnType) -> Self {
        value.to_string()
    }
}

/// Fault injection settings. Rates are fractions in `0.0..=1.0` of REST calls (the
/// token endpoints are never faulted). Also accepted at runtime by `POST /sim/faults`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Seed of the deterministic fault RNG.
    pub seed: u64,
    /// 429 with `Retry-After` and `{"message":"Rate limit exceeded","errorcode":50100,"retryAfter":N}`.
    pub rate_429: f64,
    /// Seconds announced in 429 answers.
    pub retry_after: u64,
    /// 500 with a JSON body.
    pub rate_500: f64,
    /// 400 errorcode 10006 without `additionalErrors` (transient), data extension calls only.
    pub rate_bare_10006: f64,
    /// Fraction of calls delayed by `slow_ms` before being handled.
    pub rate_slow: f64,
    pub slow_ms: u64,
    /// Close the connection without any response.
    pub rate_drop: f64,
    /// Dropped calls are handled first (rows saved, response lost) instead of being
    /// dropped before anything is saved.
    pub drop_after_handling: bool,
    /// Above this many REST requests in the current second, answer 429.
    pub max_rps: Option<u32>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            seed: 1,
            rate_429: 0.0,
            retry_after: 1,
            rate_500: 0.0,
            rate_bare_10006: 0.0,
            rate_slow: 0.0,
            slow_ms: 0,
            rate_drop: 0.0,
            drop_after_handling: false,
            max_rps: None,
        }
    }
}

impl Faults {
    pub fn validate(&self) -> anyhow::Result<()> {
        for (name, rate) in [
            ("rate_429", self.rate_429),
            ("rate_500", self.rate_500),
            ("rate_bare_10006", self.rate_bare_10006),
            ("rate_slow", self.rate_slow),
            ("rate_drop", self.rate_drop),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                bail!("faults.{name} must be between 0.0 and 1.0, got {rate}");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_example_yaml() {
        let yaml = r#"
token_lifetime: 1079
clients:
  - { client_id: abc, client_secret: s3cret }
unknown_data_extensions: reject
data_extensions:
  orders:
    primary_keys: [Order Id, Contact Key]
    columns: { Order Id: Text(50), Contact Key: Text(254), Revenue: Decimal, Quantity: Number, Paid: Boolean, Created At: Date, Email: EmailAddress, Note: Text }
api_events: []
faults:
  seed: 1
  rate_429: 0.0
  retry_after: 1
  rate_500: 0.0
  rate_bare_10006: 0.0
  rate_slow: 0.0
  slow_ms: 0
  rate_drop: 0.0
  max_rps: null
"#;
        let c = SimConfig::from_yaml(yaml).unwrap();
        assert_eq!(c.unknown_data_extensions, UnknownDataExtensions::Reject);
        let orders = &c.data_extensions["orders"];
        assert_eq!(orders.columns["Order Id"], ColumnType::Text(50));
        assert_eq!(orders.columns["Note"], ColumnType::Text(4000));
        assert_eq!(orders.columns["Email"], ColumnType::EmailAddress);
        assert_eq!(c.faults.max_rps, None);
    }

    #[test]
    fn rejects_unknown_fields_and_types() {
        assert!(SimConfig::from_yaml("bogus: 1").is_err());
        assert!(SimConfig::from_yaml("data_extensions: { x: { columns: { a: Blob } } }").is_err());
        assert!(
            SimConfig::from_yaml(
                "data_extensions: { x: { primary_keys: [b], columns: { a: Text } } }"
            )
            .is_err()
        );
        assert!(SimConfig::from_yaml("").is_ok());
    }
}
