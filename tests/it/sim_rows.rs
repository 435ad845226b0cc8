//! How the simulator reads rowset bodies: exactly as `serde_json::Value` reads them
//! (repeated keys, escapes, number forms, nesting, errors), whichever parser ran.

use reqwest::Client;
use serde_json::{Value, json};
use sfmc_relay::sim::SimHandle;

use crate::support::{post_rowset, start_sim};

const CONFIG: &str = r#"
unknown_data_extensions: accept
data_extensions:
  orders:
    primary_keys: [Order Id]
    columns: { Order Id: Text(50), Email: EmailAddress, Note: Text(10), Quantity: Number }
"#;

async fn start() -> (SimHandle, Client, String) {
    let sim = start_sim(CONFIG).await;
    let tok = sim.state().issue_token();
    (sim, Client::new(), tok)
}

/// Stored rows as JSON text (so that key order and number forms count).
fn rows_text(sim: &SimHandle, key: &str) -> String {
    serde_json::to_string(&sim.rows(key)).unwrap()
}

#[tokio::test]
async fn repeated_keys_escapes_and_numbers() {
    let (sim, client, tok) = start().await;
    let body = r#"[
      {"keys":{"Id":"1"},"values":{"A":1,"B":"two","A":3,"Big":18446744073709551615,
        "Neg":-9223372036854775808,"F":1.50,"E":1e2,"Z":-0,"Tiny":1E-7,"T":true,"N":null}},
      {"keys":{"I\u0064":"caf\u00e9"},"values":{"Na\u006de":"q\"uote \\ back\/slash\n\u0001 \ud83d\ude00","":"empty name"}}
    ]"#;
    let (status, text) = post_rowset(&client, &sim, &tok, "Things", body).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(text, body, "the body is echoed as sent");
    assert_eq!(
        rows_text(&sim, "things"),
        concat!(
            r#"[{"keys":{"Id":"1"},"values":{"A":3,"B":"two","Big":18446744073709551615,"#,
            r#""Neg":-9223372036854775808,"F":1.5,"E":100.0,"Z":-0.0,"Tiny":1e-7,"T":true,"N":null}},"#,
            r#"{"keys":{"Id":"café"},"values":{"Name":"q\"uote \\ back/slash\n\u0001 😀","":"empty name"}}]"#
        )
    );
    // Exactly what serde_json::Value makes of the same objects.
    let parsed: Value = serde_json::from_str(body).unwrap();
    let rows = sim.rows("things");
    assert_eq!(rows[0]["values"], parsed[0]["values"]);
    assert_eq!(rows[1]["values"], parsed[1]["values"]);
    let log = sim.log();
    assert_eq!(log.len(), 2);
    assert_eq!(Value::Object(log[1].values.clone()), parsed[1]["values"]);
}

#[tokio::test]
async fn undeclared_columns_take_the_first_casing_seen() {
    let (sim, client, tok) = start().await;
    let body = r#"[
      {"keys":{"Id":"1"},"values":{"Email":"a@x.io","Plan":"free"}},
      {"keys":{"ID":"2"},"values":{"EMAIL":"b@x.io","plan":"pro","email":"c@x.io","New":1}},
      {"keys":{"id":"1"},"values":{"new":true,"PLAN":"team"}}
    ]"#;
    let (status, text) = post_rowset(&client, &sim, &tok, "Users", body).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        rows_text(&sim, "users"),
        concat!(
            r#"[{"keys":{"Id":"1"},"values":{"Email":"a@x.io","Plan":"team","New":true}},"#,
            r#"{"keys":{"Id":"2"},"values":{"Email":"c@x.io","Plan":"pro","New":1}}]"#
        )
    );
    let log = sim.log();
    assert_eq!(log.len(), 3);
    assert_eq!(
        Value::Object(log[1].values.clone()),
        json!({"Email":"c@x.io","Plan":"pro","New":1})
    );
    assert_eq!(Value::Object(log[2].keys.clone()), json!({"Id":"1"}));
}

#[tokio::test]
async fn declared_columns_repeated_in_other_casings() {
    let (sim, client, tok) = start().await;
    let body = r#"[{"keys":{"order id":"o-1","Order Id":"o-1"},
      "values":{"note":"first","EMAIL":"a@x.io","Note":"second","Unknown":[1,2],"order id":"ignored"}}]"#;
    let (status, text) = post_rowset(&client, &sim, &tok, "orders", body).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        rows_text(&sim, "orders"),
        r#"[{"keys":{"Order Id":"o-1"},"values":{"Note":"second","Email":"a@x.io"}}]"#
    );
    // A value overwritten by a later repeat of its key is not validated.
    let body = r#"[{"keys":{"Order Id":"o-2"},"values":{"Quantity":"x","Quantity":2}},
                   {"keys":{"Order Id":"o-3"},"values":{"Quantity":[2]}}]"#;
    let (status, text) = post_rowset(&client, &sim, &tok, "orders", body).await;
    assert_eq!(status, 400);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v["additionalErrors"][0]["message"],
        "Quantity: The value for column [Quantity] is not valid."
    );
    assert_eq!(
        sim.rows("orders").len(),
        2,
        "the row before the bad one is saved"
    );
    assert_eq!(sim.rows("orders")[1]["values"], json!({"Quantity": 2}));
}

#[tokio::test]
async fn nested_values_in_undeclared_data_extensions() {
    let (sim, client, tok) = start().await;
    let body = r#"[{"keys":{"Id":"1"},"values":{"Arr":[1,{"b":2,"b":3}],"Obj":{"x":null,"y":"\u00e9"}},"extra":{"ignored":[]}}]"#;
    let (status, text) = post_rowset(&client, &sim, &tok, "Nested", body).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        rows_text(&sim, "nested"),
        r#"[{"keys":{"Id":"1"},"values":{"Arr":[1,{"b":3}],"Obj":{"x":null,"y":"é"}}}]"#
    );
}

#[tokio::test]
async fn json_errors_are_serde_json_errors() {
    let (sim, client, tok) = start().await;
    let deep = format!(
        r#"[{{"keys":{{"Id":"1"}},"values":{{"A":{}1{}}}}}]"#,
        "[".repeat(130),
        "]".repeat(130)
    );
    let bodies = [
        deep.as_str(),
        r#"[{"keys":{"Id":"1"},"values":{"A":1,}}]"#,
        r#"[{"keys":{"Id":"1"},"values":{"A":1}},]"#,
        r#"[{"keys":{"Id":"1"},"values":{"A":"\x"}}]"#,
        r#"[{"keys":{"Id":"1"},"values":{"A":"\ud800"}}]"#,
        "[{\"keys\":{\"Id\":\"1\"},\"values\":{\"A\":\"raw\ttab\"}}]",
        r#"[{"keys":{"Id":"1"},"values":{"A":01}}]"#,
        r#"[{"keys":{"Id":"1"},"values":{"A":1e400}}]"#,
        r#"[{"keys":{"Id":"1"},"values":{"A":tru}}]"#,
        r#"[{"keys":{"Id":"1"},"values":{"A":1}}] trailing"#,
        r#"[{"keys":{"Id":"1"},"values":{"A":1}}"#,
        "",
    ];
    for body in bodies {
        for key in ["Anything", "orders"] {
            let (status, text) = post_rowset(&client, &sim, &tok, key, body).await;
            assert_eq!(status, 400, "{body}");
            let want = serde_json::from_str::<Value>(body).unwrap_err();
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(
                v,
                json!({"message": format!("Request body is not valid JSON: {want}"), "errorcode": 10000, "documentation": ""}),
                "{body}"
            );
        }
    }
    // Wrong shapes, after a good row that is saved.
    for (body, message) in [
        (
            r#"[{"keys":{"Id":"1"},"values":{"A":1}}, 5]"#,
            "Each row must be an object of the form {\"keys\":{...},\"values\":{...}}.",
        ),
        (
            r#"[{"keys":{"Id":"1"},"values":{"A":1}}, {"keys":[1]}]"#,
            "The 'keys' property of a row must be an object.",
        ),
        (
            r#"[{"keys":{"Id":"1"},"values":{"A":1}}, {"keys":null,"values":"x"}]"#,
            "The 'values' property of a row must be an object.",
        ),
    ] {
        let (status, text) = post_rowset(&client, &sim, &tok, "Shapes", body).await;
        assert_eq!(status, 400, "{body}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["message"], message, "{body}");
    }
    assert_eq!(sim.rows("shapes").len(), 1);
    assert_eq!(sim.stats().rows_rejected, 3);
}
