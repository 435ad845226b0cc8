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
    format!(
        "/hub/v1/dataevents/key:{}/rowset",
        encode_segment(data_extension)
    )
}

/// Percent-encode everything but RFC 3986 unreserved characters.
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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
        match self {
            Action::CreateContact { .. } => CONTACTS_PATH.into(),
            Action::UpsertRow { data_extension, .. } => rowset_path(data_extension).into(),
            Action::ApiEvent { .. } => EVENTS_PATH.into(),
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
    }
}
