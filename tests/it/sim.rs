//! The SFMC simulator over real HTTP on loopback.

use std::time::Duration;

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use sfmc_relay::sim::{Faults, SimHandle};

use crate::support::{post_rowset, start_sim};

const CONFIG: &str = r#"
token_lifetime: 1079
clients:
  - { client_id: abc, client_secret: s3cret }
unknown_data_extensions: reject
data_extensions:
  orders:
    primary_keys: [Order Id, Contact Key]
    columns: { Order Id: Text(50), Contact Key: Text(254), Revenue: Decimal, Quantity: Number, Paid: Boolean, Created At: Date, Email: EmailAddress, Note: Text(10) }
  NoKeys:
    columns: { Name: Text(20) }
api_events: [Order-Placed]
"#;

async fn token(client: &Client, sim: &SimHandle) -> String {
    let resp = client
        .post(format!("{}/v2/token", sim.base_url()))
        .json(
            &json!({"grant_type":"client_credentials","client_id":"abc","client_secret":"s3cret"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_string()
}

async fn setup() -> (SimHandle, Client, String) {
    let sim = start_sim(CONFIG).await;
    let client = Client::new();
    let token = token(&client, &sim).await;
    (sim, client, token)
}

async fn rowset(
    client: &Client,
    sim: &SimHandle,
    tok: &str,
    key: &str,
    rows: Value,
) -> (StatusCode, Value) {
    let (status, body) = post_rowset(client, sim, tok, key, &rows.to_string()).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

async fn get_json(client: &Client, url: String) -> Value {
    let resp = client.get(url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

fn order(id: &str, contact: &str, values: Value) -> Value {
    json!({"keys": {"Order Id": id, "Contact Key": contact}, "values": values})
}

#[tokio::test]
async fn token_v2_json_and_form() {
    let sim = start_sim(CONFIG).await;
    let client = Client::new();
    let resp = client
        .post(format!("{}/v2/token", sim.base_url()))
        .json(&json!({"grant_type":"client_credentials","client_id":"abc","client_secret":"s3cret","account_id":"123456"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 1079);
    assert_eq!(body["rest_instance_url"], format!("{}/", sim.base_url()));
    assert!(body["access_token"].as_str().unwrap().len() >= 32);

    let resp = client
        .post(format!("{}/v2/token", sim.base_url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&client_id=abc&client_secret=s3cret&scope=data_extensions_write%20journeys_execute")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["scope"], "data_extensions_write journeys_execute");
    let tok = body["access_token"].as_str().unwrap();

    // The form token works on REST.
    let (status, _) = rowset(
        &client,
        &sim,
        tok,
        "orders",
        json!([order("o-1", "u-1", json!({"Paid": true}))]),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(sim.stats().tokens_issued, 2);
}

#[tokio::test]
async fn token_v1() {
    let sim = start_sim(CONFIG).await;
    let client = Client::new();
    let resp = client
        .post(format!("{}/v1/requestToken", sim.base_url()))
        .json(&json!({"clientId":"abc","clientSecret":"s3cret"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["expiresIn"], 1079);
    let tok = body["accessToken"].as_str().unwrap();
    let (status, _) = rowset(
        &client,
        &sim,
        tok,
        "orders",
        json!([order("o-1", "u-1", json!({"Paid": true}))]),
    )
    .await;
    assert_eq!(status, 200);

    let resp = client
        .post(format!("{}/v1/requestToken", sim.base_url()))
        .json(&json!({"clientId":"abc","clientSecret":"wrong"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        json!({"message":"Unauthorized","errorcode":1,"documentation":""})
    );
}

#[tokio::test]
async fn bad_credentials_and_grant_type() {
    let sim = start_sim(CONFIG).await;
    let client = Client::new();
    let url = format!("{}/v2/token", sim.base_url());
    let resp = client
        .post(&url)
        .json(&json!({"grant_type":"client_credentials","client_id":"abc","client_secret":"nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .starts_with("Client authentication failed.")
    );

    for body in [
        json!({"client_id":"abc","client_secret":"s3cret"}),
        json!({"grant_type":"password","client_id":"abc","client_secret":"s3cret"}),
    ] {
        let resp = client.post(&url).json(&body).send().await.unwrap();
        assert_eq!(resp.status(), 400);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "unsupported_grant_type");
    }

    let resp = client
        .post(&url)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    // Empty client list: any non-empty id/secret is accepted, empty ones are not.
    let open = start_sim("").await;
    let url = format!("{}/v2/token", open.base_url());
    let ok = client
        .post(&url)
        .json(&json!({"grant_type":"client_credentials","client_id":"x","client_secret":"y"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let empty = client
        .post(&url)
        .json(&json!({"grant_type":"client_credentials","client_id":"","client_secret":"y"}))
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status(), 401);
}

#[tokio::test]
async fn rest_requires_a_valid_token() {
    let (sim, client, tok) = setup().await;
    let url = format!("{}/hub/v1/dataevents/key:orders/rowset", sim.base_url());
    let rows = json!([order("o-1", "u-1", json!({"Paid": true}))]);
    let expect_401 = |resp: reqwest::Response| async move {
        assert_eq!(resp.status(), 401);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["message"], "Not Authorized");
        assert_eq!(body["errorcode"], 0);
    };
    expect_401(client.post(&url).json(&rows).send().await.unwrap()).await;
    expect_401(
        client
            .post(&url)
            .bearer_auth("bogus")
            .json(&rows)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let resp = client
        .post(&url)
        .bearer_auth(&tok)
        .json(&rows)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // Revoked.
    let resp = client
        .post(format!("{}/sim/revoke-tokens", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    expect_401(
        client
            .post(&url)
            .bearer_auth(&tok)
            .json(&rows)
            .send()
            .await
            .unwrap(),
    )
    .await;

    // Expired.
    let short = start_sim("token_lifetime: 1").await;
    let resp = client
        .post(format!("{}/v2/token", short.base_url()))
        .json(&json!({"grant_type":"client_credentials","client_id":"a","client_secret":"b"}))
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["expires_in"], 1);
    let tok = body["access_token"].as_str().unwrap().to_string();
    let url = format!("{}/contacts/v1/contacts", short.base_url());
    let contact = json!({"contactKey":"u-1","attributeSets":[]});
    let resp = client
        .post(&url)
        .bearer_auth(&tok)
        .json(&contact)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    expect_401(
        client
            .post(&url)
            .bearer_auth(&tok)
            .json(&contact)
            .send()
            .await
            .unwrap(),
    )
    .await;
}

#[tokio::test]
async fn rowset_success_and_upsert_merge() {
    let (sim, client, tok) = setup().await;
    let rows = json!([
        order(
            "o-1",
            "u-1",
            json!({"Revenue": 12.5, "Quantity": 2, "Paid": true, "Created At": "2024-05-01T12:00:00Z", "Email": "a@example.com"})
        ),
        order("o-2", "u-1", json!({"Revenue": "3.10", "Note": "first"})),
    ]);
    let (status, body) = rowset(&client, &sim, &tok, "orders", rows.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(body, rows, "200 echoes the rows");

    // Same primary key: values merge, later write wins per column.
    let (status, _) = rowset(
        &client,
        &sim,
        &tok,
        "orders",
        json!([order(
            "o-1",
            "u-1",
            json!({"Quantity": 5, "Note": "second"})
        )]),
    )
    .await;
    assert_eq!(status, 200);

    let stored = get_json(
        &client,
        format!("{}/sim/dataextensions/orders/rows", sim.base_url()),
    )
    .await;
    let stored = stored.as_array().unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(
        stored[0]["keys"],
        json!({"Order Id": "o-1", "Contact Key": "u-1"})
    );
    assert_eq!(stored[0]["values"]["Quantity"], 5);
    assert_eq!(stored[0]["values"]["Revenue"], 12.5);
    assert_eq!(stored[0]["values"]["Note"], "second");
    assert_eq!(stored[0]["values"]["Email"], "a@example.com");
    assert_eq!(stored[1]["keys"]["Order Id"], "o-2");
    assert_eq!(sim.rows("ORDERS").len(), 2);

    // Composite keys: same order id, other contact = another row.
    let (status, _) = rowset(
        &client,
        &sim,
        &tok,
        "orders",
        json!([order("o-1", "u-2", json!({"Paid": true}))]),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(sim.rows("orders").len(), 3);
    assert_eq!(sim.stats().rows_upserted, 4);

    // Single row PUT with a composite key in the URL.
    let resp = client
        .put(format!(
            "{}/hub/v1/dataevents/key:orders/rows/Order%20Id:o-2,Contact%20Key:u-1",
            sim.base_url()
        ))
        .bearer_auth(&tok)
        .json(&json!({"values": {"Note": "put"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let rows = sim.rows("orders");
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[1]["values"]["Note"], "put");
    assert_eq!(rows[1]["values"]["Revenue"], "3.10");
}

#[tokio::test]
async fn missing_primary_key() {
    let (sim, client, tok) = setup().await;
    let (status, body) = rowset(
        &client,
        &sim,
        &tok,
        "orders",
        json!([{"keys": {"Order Id": "o-1"}, "values": {"Revenue": 1}}]),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"message":"Primary key 'Contact Key' does not exist.","errorcode":10000,"documentation":""})
    );
    // A primary key sent only in `values` does not count.
    let (status, _) = rowset(
        &client,
        &sim,
        &tok,
        "orders",
        json!([{"keys": {"Order Id": "o-1"}, "values": {"Contact Key": "u-1"}}]),
    )
    .await;
    assert_eq!(status, 400);
    assert!(sim.rows("orders").is_empty());
}

#[tokio::test]
async fn type_errors_poison_the_rest() {
    let (sim, client, tok) = setup().await;
    let rows = json!([
        order("o-1", "u-1", json!({"Email": "ok@example.com"})),
        order(
            "o-2",
            "u-1",
            json!({"Email": "not-an-email", "Created At": "31/12/2024", "Note": "far too long for ten"})
        ),
        order("o-3", "u-1", json!({"Email": "fine@example.com"})),
    ]);
    let (status, body) = rowset(&client, &sim, &tok, "orders", rows).await;
    assert_eq!(status, 400);
    assert_eq!(body["errorcode"], 10006);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("Unable to save rows for data extension ID ")
    );
    let messages: Vec<&str> = body["additionalErrors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert!(
        messages.contains(&"Email: The value for column [Email] is not a valid email address."),
        "{messages:?}"
    );
    assert!(
        messages.contains(&"Created At: The value for column [Created At] is not a valid date.")
    );
    assert!(
        messages
            .contains(&"Note: The value for column [Note] exceeds the column's maximum length.")
    );
    assert!(
        !body.to_string().contains("o-2"),
        "the error does not name the row"
    );

    // Only the row before the bad one landed.
    let stored = sim.rows("orders");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["keys"]["Order Id"], "o-1");
    let stats = sim.stats();
    assert_eq!(stats.rows_upserted, 1);
    assert_eq!(stats.rows_rejected, 2);

    // Other typed failures.
    for values in [
        json!({"Quantity": 1.5}),
        json!({"Quantity": "many"}),
        json!({"Paid": "maybe"}),
        json!({"Revenue": "12,5"}),
        json!({"Created At": "1700-01-01"}),
        json!({"Email": null}),
        json!({"Note": {"nested": true}}),
    ] {
        let (status, body) = rowset(
            &client,
            &sim,
            &tok,
            "orders",
            json!([order("o-9", "u-9", values.clone())]),
        )
        .await;
        assert_eq!(status, 400, "{values}");
        assert_eq!(body["errorcode"], 10006, "{values}");
        assert_eq!(
            body["additionalErrors"].as_array().unwrap().len(),
            1,
            "{values}"
        );
    }
    // Accepted forms.
    let (status, body) = rowset(
        &client,
        &sim,
        &tok,
        "orders",
        json!([
            order(
                "o-10",
                "u-1",
                json!({"Created At": "2013-05-23", "Quantity": "7", "Paid": "false", "Revenue": 3})
            ),
            order(
                "o-11",
                "u-1",
                json!({"Created At": "2013-05-23 14:32:00", "Email": ""})
            ),
            order(
                "o-12",
                "u-1",
                json!({"Created At": "2013-05-23T14:32:00.000Z"})
            ),
        ]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(sim.rows("orders").len(), 4);
}

#[tokio::test]
async fn case_insensitive_columns_and_unknown_columns() {
    let (sim, client, tok) = setup().await;
    let (status, _) = rowset(
        &client,
        &sim,
        &tok,
        "ORDERS",
        json!([{"keys": {"order id": "o-1", "CONTACT KEY": "u-1"}, "values": {"revenue": 9.99, "Bogus Column": "x"}}]),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = rowset(
        &client,
        &sim,
        &tok,
        "Orders",
        json!([{"keys": {"Order ID": "o-1", "contact key": "u-1"}, "values": {"NOTE": "merged"}}]),
    )
    .await;
    assert_eq!(status, 200);
    let rows = sim.rows("orders");
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0],
        json!({"keys": {"Order Id": "o-1", "Contact Key": "u-1"}, "values": {"Revenue": 9.99, "Note": "merged"}})
    );

    // A row with no existing column at all.
    let (status, body) = rowset(
        &client,
        &sim,
        &tok,
        "NoKeys",
        json!([{"keys": {}, "values": {"Bogus": 1}}]),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["errorcode"], 10006);
    assert_eq!(
        body["additionalErrors"][0]["message"],
        "At least one existing field is required in the values property"
    );
    // Without primary keys every row is a new row.
    for _ in 0..2 {
        let (status, _) = rowset(
            &client,
            &sim,
            &tok,
            "nokeys",
            json!([{"keys": {}, "values": {"name": "n"}}]),
        )
        .await;
        assert_eq!(status, 200);
    }
    assert_eq!(sim.rows("NoKeys").len(), 2);

    // Unknown data extension (reject mode).
    let (status, body) = rowset(
        &client,
        &sim,
        &tok,
        "nope",
        json!([order("o-1", "u-1", json!({"Paid": true}))]),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"message":"Parameter key:nope is invalid.","errorcode":10001,"documentation":""})
    );
}

#[tokio::test]
async fn unknown_data_extensions_accepted() {
    let sim = start_sim("unknown_data_extensions: accept").await;
    let client = Client::new();
    let tok = sim.state().issue_token();
    let (status, _) = rowset(
        &client,
        &sim,
        &tok,
        "Users",
        json!([
            {"keys": {"Contact Key": "u-1"}, "values": {"Plan": "pro", "Anything": null}},
            {"keys": {"contact key": "u-1"}, "values": {"plan": "free"}},
            {"keys": {"Contact Key": "u-2"}, "values": {"Plan": "pro"}},
        ]),
    )
    .await;
    assert_eq!(status, 200);
    let rows = sim.rows("users");
    assert_eq!(rows.len(), 2);
    assert_eq!(
        rows[0],
        json!({"keys": {"Contact Key": "u-1"}, "values": {"Plan": "free", "Anything": null}})
    );
}

#[tokio::test]
async fn malformed_bodies_and_limits() {
    let (sim, client, tok) = setup().await;
    let url = format!("{}/hub/v1/dataevents/key:orders/rowset", sim.base_url());
    for body in ["{nope", "{\"keys\":{}}", "[1, 2]"] {
        let resp = client
            .post(&url)
            .bearer_auth(&tok)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{body}");
        let v: Value = resp.json().await.unwrap();
        assert!(!v["message"].as_str().unwrap().is_empty());
    }
    // Over 5 MB.
    let big = "x".repeat(6_000_000);
    let resp = client
        .post(&url)
        .bearer_auth(&tok)
        .json(&json!([order("o-1", "u-1", json!({"Note": big}))]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let v: Value = resp.json().await.unwrap();
    assert!(v["message"].as_str().unwrap().contains("maximum size"));

    // Known route, wrong method.
    let resp = client
        .get(format!("{}/v2/token", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    let v: Value = resp.json().await.unwrap();
    assert!(v["message"].as_str().unwrap().contains("GET"));

    // Unknown route.
    let resp = client
        .get(format!("{}/no/such/route", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await.unwrap();
    assert!(v["message"].as_str().unwrap().contains("/no/such/route"));
}

#[tokio::test]
async fn contacts() {
    let (sim, client, tok) = setup().await;
    let url = format!("{}/contacts/v1/contacts", sim.base_url());
    let post = |body: Value| client.post(&url).bearer_auth(&tok).json(&body).send();
    let resp = post(json!({"contactKey":"u-1","attributeSets":[]}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["operationStatus"], "OK");
    assert_eq!(body["rowsAffetcted"], 1);
    assert_eq!(body["contactKey"], "u-1");
    assert_eq!(body["isNewContactKey"], true);
    assert_eq!(body["hasErrors"], false);
    let id = body["contactId"].clone();

    let body: Value = post(json!({"contactKey":"u-1","attributeSets":[]}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["isNewContactKey"], false);
    assert_eq!(body["contactId"], id);

    for bad in [
        json!({"attributeSets": []}),
        json!({"contactKey": "a:b"}),
        json!({"contactKey": "x".repeat(255)}),
        json!({"contactKey": ""}),
    ] {
        let resp = post(bad.clone()).await.unwrap();
        assert_eq!(resp.status(), 400, "{bad}");
        let body: Value = resp.json().await.unwrap();
        assert!(!body["message"].as_str().unwrap().is_empty());
    }
    let listed = get_json(&client, format!("{}/sim/contacts", sim.base_url())).await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["contactKey"], "u-1");
    assert_eq!(sim.contacts().len(), 1);
}

#[tokio::test]
async fn api_events() {
    let (sim, client, tok) = setup().await;
    let url = format!("{}/interaction/v1/events", sim.base_url());
    let resp = client
        .post(&url)
        .bearer_auth(&tok)
        .json(&json!({"contactKey":"u-1","eventDefinitionKey":"Order-Placed","data":{"Order Id":"o-1"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    let id = body["eventInstanceId"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 36);

    let resp = client
        .post(&url)
        .bearer_auth(&tok)
        .json(&json!({"ContactKey":"u-1","EventDefinitionKey":"Unknown-Event","Data":{}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = client
        .post(&url)
        .bearer_auth(&tok)
        .json(&json!({"EventDefinitionKey":"Order-Placed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    // Not idempotent: a second send is a second event.
    let resp = client
        .post(&url)
        .bearer_auth(&tok)
        .json(&json!({"ContactKey":"u-1","EventDefinitionKey":"Order-Placed","Data":{"Order Id":"o-1"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);

    let events = get_json(&client, format!("{}/sim/events", sim.base_url())).await;
    let events = events.as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["eventInstanceId"], id.as_str());
    assert_eq!(events[0]["ContactKey"], "u-1");
    assert_eq!(events[0]["EventDefinitionKey"], "Order-Placed");
    assert_eq!(events[0]["Data"], json!({"Order Id": "o-1"}));
    assert_eq!(sim.api_events().len(), 2);
}

#[tokio::test]
async fn fault_429_with_retry_after() {
    let (sim, client, tok) = setup().await;
    sim.set_faults(Faults {
        rate_429: 1.0,
        retry_after: 7,
        ..Faults::default()
    });
    let (status, body) = rowset(
        &client,
        &sim,
        &tok,
        "orders",
        json!([order("o-1", "u-1", json!({"Paid": true}))]),
    )
    .await;
    assert_eq!(status, 429);
    assert_eq!(
        body,
        json!({"message":"Rate limit exceeded","errorcode":50100,"retryAfter":7})
    );
    let resp = client
        .post(format!("{}/contacts/v1/contacts", sim.base_url()))
        .bearer_auth(&tok)
        .json(&json!({"contactKey":"u-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "7");
    assert!(sim.rows("orders").is_empty());
    // Token endpoints are never faulted.
    token(&client, &sim).await;

    // Replace faults over HTTP: 500 then transient bare 10006.
    let resp = client
        .post(format!("{}/sim/faults", sim.base_url()))
        .json(&json!({"rate_500": 1.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (status, _) = rowset(
        &client,
        &sim,
        &tok,
        "orders",
        json!([order("o-1", "u-1", json!({"Paid": true}))]),
    )
    .await;
    assert_eq!(status, 500);
    client
        .post(format!("{}/sim/faults", sim.base_url()))
        .json(&json!({"rate_bare_10006": 1.0}))
        .send()
        .await
        .unwrap();
    let (status, body) = rowset(
        &client,
        &sim,
        &tok,
        "orders",
        json!([order("o-1", "u-1", json!({"Paid": true}))]),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["errorcode"], 10006);
    assert!(body.get("additionalErrors").is_none());
    assert!(sim.rows("orders").is_empty());
    let resp = client
        .post(format!("{}/sim/faults", sim.base_url()))
        .json(&json!({"rate_bogus": 1.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    let stats = sim.stats();
    assert_eq!(stats.faults_injected["429"], 2);
    assert_eq!(stats.faults_injected["500"], 1);
    assert_eq!(stats.faults_injected["bare_10006"], 1);
    assert_eq!(stats.status_count("429"), 2);
}

#[tokio::test]
async fn fault_max_rps() {
    let (sim, client, tok) = setup().await;
    sim.set_faults(Faults {
        max_rps: Some(5),
        ..Faults::default()
    });
    let mut ok = 0;
    let mut limited = 0;
    for i in 0..20 {
        let (status, _) = rowset(
            &client,
            &sim,
            &tok,
            "orders",
            json!([order(&format!("o-{i}"), "u-1", json!({"Paid": true}))]),
        )
        .await;
        match status.as_u16() {
            200 => ok += 1,
            429 => limited += 1,
            other => panic!("unexpected {other}"),
        }
    }
    // Twenty sequential calls on loopback take well under a few seconds: some are limited.
    assert!(ok >= 5, "ok={ok}");
    assert!(limited >= 1, "limited={limited}");
    assert_eq!(sim.rows("orders").len(), ok);
}

#[tokio::test]
async fn fault_drop_closes_the_connection() {
    let (sim, client, tok) = setup().await;
    sim.set_faults(Faults {
        rate_drop: 1.0,
        ..Faults::default()
    });
    let result = client
        .post(format!(
            "{}/hub/v1/dataevents/key:orders/rowset",
            sim.base_url()
        ))
        .bearer_auth(&tok)
        .json(&json!([order("o-1", "u-1", json!({"Paid": true}))]))
        .send()
        .await;
    assert!(
        result.is_err(),
        "expected a transport error, got {result:?}"
    );
    assert!(sim.rows("orders").is_empty());
    sim.set_faults(Faults::default());
    let (status, _) = rowset(
        &client,
        &sim,
        &tok,
        "orders",
        json!([order("o-1", "u-1", json!({"Paid": true}))]),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(sim.stats().faults_injected["drop"], 1);

    // Dropped after handling: the row lands, the client sees no response.
    sim.set_faults(Faults {
        rate_drop: 1.0,
        drop_after_handling: true,
        ..Faults::default()
    });
    let result = client
        .post(format!(
            "{}/hub/v1/dataevents/key:orders/rowset",
            sim.base_url()
        ))
        .bearer_auth(&tok)
        .json(&json!([order("o-2", "u-1", json!({"Paid": true}))]))
        .send()
        .await;
    assert!(
        result.is_err(),
        "expected a transport error, got {result:?}"
    );
    assert_eq!(sim.rows("orders").len(), 2);
    assert_eq!(
        sim.stats().calls["POST /hub/v1/dataevents/{key}/rowset"].by_status["dropped"],
        2
    );
}

#[tokio::test]
async fn inspection_endpoints() {
    let (sim, client, tok) = setup().await;
    let base = sim.base_url().to_string();
    let before = chrono::Utc::now();
    for i in 0..3 {
        let (status, _) = rowset(
            &client,
            &sim,
            &tok,
            "orders",
            json!([order(&format!("o-{i}"), "u-1", json!({"Quantity": i}))]),
        )
        .await;
        assert_eq!(status, 200);
    }
    let (status, _) = rowset(
        &client,
        &sim,
        &tok,
        "orders",
        json!([order("o-0", "u-1", json!({"Quantity": 9}))]),
    )
    .await;
    assert_eq!(status, 200);

    let log = get_json(&client, format!("{base}/sim/log")).await;
    let log = log.as_array().unwrap();
    assert_eq!(log.len(), 4);
    let order_ids: Vec<&str> = log
        .iter()
        .map(|e| e["keys"]["Order Id"].as_str().unwrap())
        .collect();
    assert_eq!(order_ids, ["o-0", "o-1", "o-2", "o-0"]);
    assert_eq!(log[3]["data_extension"], "orders");
    assert_eq!(log[3]["values"], json!({"Quantity": 9}));
    assert_eq!(log[0]["seq"], 1);
    // Each upsert says when it was saved (RFC 3339, UTC), in order, within this test.
    let landed: Vec<chrono::DateTime<chrono::Utc>> = log
        .iter()
        .map(|e| {
            let t = e["landed_at"].as_str().unwrap();
            assert!(t.ends_with('Z'), "{t}");
            chrono::DateTime::parse_from_rfc3339(t).unwrap().to_utc()
        })
        .collect();
    assert!(landed.is_sorted(), "{landed:?}");
    assert!(landed[0] >= before - chrono::Duration::milliseconds(1));
    assert!(landed[3] <= chrono::Utc::now());

    let stats = get_json(&client, format!("{base}/sim/stats")).await;
    assert_eq!(
        stats["calls"]["POST /hub/v1/dataevents/{key}/rowset"]["total"],
        4
    );
    assert_eq!(
        stats["calls"]["POST /hub/v1/dataevents/{key}/rowset"]["by_status"]["200"],
        4
    );
    assert_eq!(stats["calls"]["POST /v2/token"]["total"], 1);
    assert_eq!(stats["tokens_issued"], 1);
    assert_eq!(stats["rows_upserted"], 4);
    assert_eq!(
        sim.stats().calls_to("POST /hub/v1/dataevents/{key}/rowset"),
        4
    );

    let des = get_json(&client, format!("{base}/sim/dataextensions")).await;
    assert!(
        des.as_array()
            .unwrap()
            .iter()
            .any(|d| d["key"] == "orders" && d["rows"] == 3)
    );
    let resp = client
        .get(format!("{base}/sim/dataextensions/unknown/rows"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    let summary = sim.summary_text();
    assert!(summary.contains("orders: 3 rows (4 upserts)"), "{summary}");
    assert!(
        summary.contains("POST /hub/v1/dataevents/{key}/rowset: 4"),
        "{summary}"
    );
    let text = client
        .get(format!("{base}/sim/summary"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("orders: 3 rows"));

    let resp = client
        .post(format!("{base}/sim/reset"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(sim.rows("orders").is_empty());
    assert!(sim.log().is_empty());
    assert_eq!(sim.stats().rows_upserted, 0);
    // Tokens survive a reset.
    let (status, _) = rowset(
        &client,
        &sim,
        &tok,
        "orders",
        json!([order("o-0", "u-1", json!({"Paid": true}))]),
    )
    .await;
    assert_eq!(status, 200);

    sim.shutdown().await;
    assert!(
        client
            .get(format!("{base}/sim/stats"))
            .send()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn many_rows_quickly() {
    let (sim, client, tok) = setup().await;
    let mut handles = Vec::new();
    for w in 0..4 {
        let client = client.clone();
        let url = format!("{}/hub/v1/dataevents/key:orders/rowset", sim.base_url());
        let tok = tok.clone();
        handles.push(tokio::spawn(async move {
            for b in 0..25 {
                let rows: Vec<Value> = (0..50)
                    .map(|i| {
                        order(
                            &format!("o-{w}-{b}-{i}"),
                            "u-1",
                            json!({"Quantity": i, "Email": "a@example.com"}),
                        )
                    })
                    .collect();
                let resp = client
                    .post(&url)
                    .bearer_auth(&tok)
                    .json(&rows)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200);
            }
        }));
    }
    let started = std::time::Instant::now();
    for h in handles {
        h.await.unwrap();
    }
    eprintln!("5000 rows in {:?}", started.elapsed());
    assert_eq!(sim.rows("orders").len(), 4 * 25 * 50);
    assert_eq!(sim.stats().rows_upserted, 5000);
}

#[tokio::test]
async fn fault_slow_and_deterministic_seed() {
    let (sim, client, tok) = setup().await;
    sim.set_faults(Faults {
        rate_slow: 1.0,
        slow_ms: 300,
        ..Faults::default()
    });
    let started = std::time::Instant::now();
    let (status, _) = rowset(
        &client,
        &sim,
        &tok,
        "orders",
        json!([order("o-1", "u-1", json!({"Paid": true}))]),
    )
    .await;
    assert_eq!(status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));

    // The same seed gives the same sequence of faults.
    let mut runs = Vec::new();
    for _ in 0..2 {
        sim.set_faults(Faults {
            seed: 42,
            rate_500: 0.5,
            ..Faults::default()
        });
        let mut statuses = Vec::new();
        for i in 0..20 {
            let (status, _) = rowset(
                &client,
                &sim,
                &tok,
                "orders",
                json!([order(&format!("o-{i}"), "u-1", json!({"Paid": true}))]),
            )
            .await;
            statuses.push(status.as_u16());
        }
        runs.push(statuses);
    }
    assert_eq!(runs[0], runs[1]);
    assert!(
        runs[0].contains(&500) && runs[0].contains(&200),
        "{:?}",
        runs[0]
    );
}
