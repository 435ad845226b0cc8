//! SFMC actions: what one event asks SFMC to do, and the HTTP calls they become.

use serde::Serialize;
use serde_json::{Value, json};

/// A row's or an API event's columns, in insertion order. An `IndexMap` like
/// `serde_json::Map`, hashed with foldhash instead of SipHash: an event's columns are
/// inserted once each, and SipHash was about 5% of the relay's instructions.
pub type Fields = indexmap::IndexMap<String, Value, foldhash::fast::RandomState>;

/// One thing an event asks of SFMC.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// `POST /contacts/v1/contacts`
    CreateContact { contact_key: String },
    /// One row upserted into a data extension (batched by the sink).
    UpsertRow {
        data_extension: String,
        keys: Fields,
        values: Fields,
    },
    /// `POST /interaction/v1/events` (Journey Builder API event; not idempotent).
    ApiEvent {
        contact_key: String,
        definition_key: String,
        data: Fields,
    },
}

/// An HTTP call to SFMC's REST API, relative to the REST base URL.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Call {
    pub method: &'static str,
    pub path: String,
    pub body: Value,
}

pub const CONTACTS_PATH: &str = "/contacts/v1/contacts";
pub const EVENTS_PATH: &str = "/interaction/v1/events";
/// `POST`: create or find many contacts in one call (see `sfmc::bulk`).
pub const ESTABLISH_PATH: &str = "/contacts/v1/establish";
/// `POST`: up to 100 journey entries of one event definition in one call.
pub const ASYNC_EVENTS_PATH: &str = "/interaction/v1/async/events";

/// `/data/v1/async/dataextensions/key:{key}/rows` (`PUT` upserts), the key
/// percent-encoded as a path segment.
pub fn async_rows_path(data_extension: &str) -> String {
    format!(
        "/data/v1/async/dataextensions/key:{}/rows",
        encode_segment(data_extension)
    )
}

/// `/data/v1/async/{requestId}/status` (`GET`).
pub fn async_status_path(request_id: &str) -> String {
    format!("/data/v1/async/{}/status", encode_segment(request_id))
}

/// `/data/v1/async/{requestId}/results?$page={page}&$pageSize={page_size}` (`GET`;
/// pages count from 1).
pub fn async_results_path(request_id: &str, page: usize, page_size: usize) -> String {
    format!(
        "/data/v1/async/{}/results?$page={page}&$pageSize={page_size}",
        encode_segment(request_id)
    )
}

/// `/hub/v1/dataevents/key:{key}/rowset`, with the key percent-encoded as a path segment.
pub fn rowset_path(data_extension: &str) -> String {
    CallPath::Rowset(data_extension).to_string()
}

/// Percent-encode everything but RFC 3986 unreserved characters.
pub fn encode_segment(s: &str) -> String {
    Segment(s).to_string()
}

/// A path segment, percent-encoded as it is written (see [`encode_segment`]).
struct Segment<'a>(&'a str);

impl std::fmt::Display for Segment<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unreserved =
            |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
        let mut rest = self.0;
        while !rest.is_empty() {
            // The run of unreserved (ASCII) bytes is written as it is, then one escaped byte.
            let run = rest
                .bytes()
                .position(|b| !unreserved(b))
                .unwrap_or(rest.len());
            f.write_str(&rest[..run])?;
            let Some(&b) = rest.as_bytes().get(run) else {
                break;
            };
            write!(f, "%{b:02X}")?;
            // Bytes after a multi-byte character's first are escaped one by one as well.
            let mut i = run + 1;
            while i < rest.len() && !rest.is_char_boundary(i) {
                write!(f, "%{:02X}", rest.as_bytes()[i])?;
                i += 1;
            }
            rest = &rest[i..];
        }
        Ok(())
    }
}

/// An action's call path, borrowed: writes itself (as text or as a JSON string) without
/// building a `String` first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallPath<'a> {
    Contacts,
    Rowset(&'a str),
    Events,
}

impl std::fmt::Display for CallPath<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallPath::Contacts => f.write_str(CONTACTS_PATH),
            CallPath::Events => f.write_str(EVENTS_PATH),
            CallPath::Rowset(de) => {
                f.write_str("/hub/v1/dataevents/key:")?;
                Segment(de).fmt(f)?;
                f.write_str("/rowset")
            }
        }
    }
}

impl Serialize for CallPath<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            CallPath::Contacts => s.serialize_str(CONTACTS_PATH),
            CallPath::Events => s.serialize_str(EVENTS_PATH),
            CallPath::Rowset(_) => s.collect_str(self),
        }
    }
}

/// One rowset entry: `{"keys":{...},"values":{...}}`.
pub fn row_json(keys: &Fields, values: &Fields) -> Value {
    json!({"keys": keys, "values": values})
}

/// A call body borrowed from an [`Action`]: serialises without copying the action.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Body<'a> {
    Contact {
        #[serde(rename = "contactKey")]
        contact_key: &'a str,
        #[serde(rename = "attributeSets")]
        attribute_sets: [(); 0],
    },
    Rows([RowRef<'a>; 1]),
    Event {
        #[serde(rename = "ContactKey")]
        contact_key: &'a str,
        #[serde(rename = "EventDefinitionKey")]
        definition_key: &'a str,
        #[serde(rename = "Data")]
        data: &'a Fields,
    },
}

/// One rowset entry, borrowed.
#[derive(Serialize)]
pub struct RowRef<'a> {
    pub keys: &'a Fields,
    pub values: &'a Fields,
}

impl Action {
    pub fn method(&self) -> &'static str {
        "POST"
    }

    pub fn path(&self) -> std::borrow::Cow<'static, str> {
        match self.call_path() {
            CallPath::Contacts => CONTACTS_PATH.into(),
            CallPath::Events => EVENTS_PATH.into(),
            p => p.to_string().into(),
        }
    }

    /// The call's path, borrowed (see [`CallPath`]).
    pub fn call_path(&self) -> CallPath<'_> {
        match self {
            Action::CreateContact { .. } => CallPath::Contacts,
            Action::UpsertRow { data_extension, .. } => CallPath::Rowset(data_extension),
            Action::ApiEvent { .. } => CallPath::Events,
        }
    }

    /// The unbatched call body, borrowed.
    pub fn body(&self) -> Body<'_> {
        match self {
            Action::CreateContact { contact_key } => Body::Contact {
                contact_key,
                attribute_sets: [],
            },
            Action::UpsertRow { keys, values, .. } => Body::Rows([RowRef { keys, values }]),
            Action::ApiEvent {
                contact_key,
                definition_key,
                data,
            } => Body::Event {
                contact_key,
                definition_key,
                data,
            },
        }
    }

    /// The call this action makes when sent on its own (unbatched).
    pub fn call(&self) -> Call {
        match self {
            Action::CreateContact { contact_key } => Call {
                method: "POST",
                path: CONTACTS_PATH.to_string(),
                body: json!({"contactKey": contact_key, "attributeSets": []}),
            },
            Action::UpsertRow {
                data_extension,
                keys,
                values,
            } => Call {
                method: "POST",
                path: rowset_path(data_extension),
                body: Value::Array(vec![row_json(keys, values)]),
            },
            Action::ApiEvent {
                contact_key,
                definition_key,
                data,
            } => Call {
                method: "POST",
                path: EVENTS_PATH.to_string(),
                body: json!({"ContactKey": contact_key, "EventDefinitionKey": definition_key, "Data": data}),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrowed_body_matches_call() {
        let mut m = Fields::default();
        m.insert("A".into(), json!(1));
        for a in [
            Action::CreateContact {
                contact_key: "k".into(),
            },
            Action::UpsertRow {
                data_extension: "d".into(),
                keys: m.clone(),
                values: m.clone(),
            },
            Action::ApiEvent {
                contact_key: "k".into(),
                definition_key: "e".into(),
                data: m.clone(),
            },
        ] {
            let call = a.call();
            assert_eq!(serde_json::to_value(a.body()).unwrap(), call.body);
            assert_eq!(a.path(), call.path);
        }
    }

    #[test]
    fn paths() {
        assert_eq!(
            rowset_path("orders"),
            "/hub/v1/dataevents/key:orders/rowset"
        );
        assert_eq!(
            rowset_path("my de/x"),
            "/hub/v1/dataevents/key:my%20de%2Fx/rowset"
        );
        assert_eq!(
            async_rows_path("my de/x"),
            "/data/v1/async/dataextensions/key:my%20de%2Fx/rows"
        );
        assert_eq!(
            async_status_path("0f1e-2d"),
            "/data/v1/async/0f1e-2d/status"
        );
        assert_eq!(
            async_results_path("0f1e-2d", 2, 500),
            "/data/v1/async/0f1e-2d/results?$page=2&$pageSize=500"
        );
        assert_eq!(encode_segment("a~b_c.d-e"), "a~b_c.d-e");
        assert_eq!(encode_segment("é\"%"), "%C3%A9%22%25");
        assert_eq!(encode_segment("€x"), "%E2%82%ACx");
        assert_eq!(encode_segment(""), "");
        // As a JSON string: the same text, escaped like any string.
        for de in ["orders", "my de/x", "é\"%"] {
            assert_eq!(
                serde_json::to_string(&CallPath::Rowset(de)).unwrap(),
                serde_json::to_string(&rowset_path(de)).unwrap()
            );
        }
        assert_eq!(
            serde_json::to_string(&CallPath::Contacts).unwrap(),
            "\"/contacts/v1/contacts\""
        );
    }
}
