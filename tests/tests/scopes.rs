//! Scopes and tenant isolation, operation by operation, from the OpenAPI document the server
//! serves. For every operation it describes:
//! - with a bearer `security` requirement: a token of the owning tenant that holds every scope
//!   but the ones the requirement names is refused (403 `insufficient_scope`), and a token that
//!   holds only the scopes of one of its ways in gets the operation's own answer;
//! - where its path (or body) names one of a tenant's resources: another tenant's token
//!   holding every scope gets 404, as for a missing resource, and the resource is as it was
//!   (for a tenant's own models and adapters, every scope but `admin`, which sees every
//!   model by design);
//!   its listings (with their queries naming the owner's resources) show nothing of the owner's;
//! - without `security`: it answers without a credential.
//!
//! One fixture table, keyed by operationId, says what kind each operation is and how to call
//! it. An operation of the document the table lacks, an entry the document lacks, or an entry
//! that disagrees with the document (public but asking for a credential, path parameters it
//! does not name) fails the suite before anything is called: a new route cannot go untested.
//!
//! Real HTTP, the real SmolLM2 model (generations of a token or two), SQLite and Postgres.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use genrt_tests::{token_scoped, Db, TestServer, WebhookReceiver, MODEL};
use reqwest::Method;
use serde_json::{json, Value};

genrt_tests::on_both_databases!(
    every_operation_demands_the_scope_its_document_names,
    no_operation_reaches_another_tenants_resources,
    api_keys_carry_scopes_no_wider_than_their_creators,
);

const ALL_SCOPES: [&str; 7] = [
    "functions:write",
    "functions:invoke",
    "invocations:read",
    "webhooks:write",
    "keys:write",
    "models:write",
    "admin",
];

/// The tenant whose resources the operations are called on, and the one that must not reach
/// them.
const OWNER: &str = "acme";
const OTHER: &str = "globex";

/// In the owner's function's system prompt: no answer to the other tenant may carry it.
const PROMPT_MARK: &str = "zanzibar-7431";
const KEY_NAME: &str = "acme-ci-key";

// ---------------------------------------------------------------------------------------------
// The fixture table
// ---------------------------------------------------------------------------------------------

/// What an operation is, for this suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// No bearer credential: the probes, and the trigger receiver (the signature is its
    /// credential).
    Public,
    /// A credential, but no tenant's own data: the registered models and devices every tenant
    /// shares, and the operator's administration of tenants (`admin`, across tenants by
    /// design).
    Global,
    /// The caller's tenant's data; what its path or body names is that tenant's.
    Tenant,
}

/// What a path parameter, a query parameter or a body field names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resource {
    /// A deployed function, by name.
    Function,
    /// A finished invocation.
    Invocation,
    /// A finished invocation whose result went to a webhook.
    HookedInvocation,
    /// A completed batch.
    Batch,
    ApiKey,
    Trigger,
    /// A webhook delivery that succeeded.
    Delivery,
    /// A registered model: every tenant's.
    Model,
    /// A model the owner registered for itself (`<tenant>.<name>`), awaiting its upload.
    OwnModel,
    /// A LoRA adapter the owner registered for itself on the shared model, awaiting its
    /// upload.
    OwnAdapter,
    /// A tenant, as the operator names it.
    ManagedTenant,
    /// An alias of the owner's function (to its version 1).
    Alias,
}

impl Resource {
    fn is_a_tenants(self) -> bool {
        !matches!(self, Resource::Model | Resource::ManagedTenant)
    }

    /// The operator (`admin`) sees and changes every tenant's models and adapters by design:
    /// the other tenant's token reaches for these (and lists the shared model's adapters)
    /// without it.
    fn is_in_the_registry(self) -> bool {
        matches!(
            self,
            Resource::Model | Resource::OwnModel | Resource::OwnAdapter
        )
    }
}

struct Fixture {
    operation: &'static str,
    access: Access,
    /// Each path parameter and what it names.
    path: Vec<(&'static str, Resource)>,
    /// Query parameters that name a resource.
    query: Vec<(&'static str, Resource)>,
    body: Option<fn(&Owned) -> Value>,
    /// The tenant resource the body names (the OpenAI routes take a function as `model`).
    body_names: Option<Resource>,
    /// The call uses the resource its path names last up (a delete, a revoke): each call
    /// gets a new one.
    consumes: bool,
    /// The answer with a scope that suffices; for a public operation, without a credential.
    granted: u16,
}

fn op(operation: &'static str, access: Access, granted: u16) -> Fixture {
    Fixture {
        operation,
        access,
        path: Vec::new(),
        query: Vec::new(),
        body: None,
        body_names: None,
        consumes: false,
        granted,
    }
}

impl Fixture {
    fn on(mut self, param: &'static str, resource: Resource) -> Self {
        self.path.push((param, resource));
        self
    }

    fn query(mut self, param: &'static str, resource: Resource) -> Self {
        self.query.push((param, resource));
        self
    }

    fn body(mut self, body: fn(&Owned) -> Value) -> Self {
        self.body = Some(body);
        self
    }

    fn names_in_body(mut self, resource: Resource) -> Self {
        self.body_names = Some(resource);
        self
    }

    fn consumes(mut self) -> Self {
        self.consumes = true;
        self
    }
}

/// Every operation of the document, by operationId.
fn fixtures() -> Vec<Fixture> {
    use Access::{Global, Public, Tenant};
    use Resource::*;
    vec![
        op("healthz", Public, 200),
        op("readyz", Public, 200),
        // Unsigned, so refused, but by the signature check: no bearer token is asked for.
        op("receive", Public, 401)
            .on("id", Trigger)
            .body(|_| json!({})),
        // Functions.
        op("deploy", Tenant, 201).body(|o| definition(&o.fresh("deployed"))),
        op("functions_list", Tenant, 200),
        op("functions_get", Tenant, 200).on("name", Function),
        op("versions", Tenant, 200).on("name", Function),
        op("functions_delete", Tenant, 204)
            .on("name", Function)
            .consumes(),
        op("prewarm", Tenant, 202)
            .on("name", Function)
            .body(|_| json!({"inputs": [{"name": "Di"}]})),
        op("evaluate", Tenant, 200)
            .on("name", Function)
            .body(|_| json!({"cases": [{"input": {"name": "Ed"}, "reference": "Hi Ed"}]})),
        op("invoke", Tenant, 202)
            .on("name", Function)
            .body(|_| json!({"input": {"name": "Cy"}, "mode": "async"})),
        op("batches_create", Tenant, 202)
            .on("name", Function)
            .body(|_| json!([{"name": "Bo"}])),
        op("triggers_create", Tenant, 201)
            .on("name", Function)
            .body(|_| json!({})),
        op("triggers_list", Tenant, 200).on("name", Function),
        // Releases: the owner's function's aliases.
        op("releases_list", Tenant, 200).on("name", Function),
        op("set", Tenant, 200)
            .on("name", Function)
            .on("alias", Alias)
            .body(|_| json!({"version": 1})),
        op("releases_delete", Tenant, 204)
            .on("name", Function)
            .on("alias", Alias)
            .consumes(),
        // A new alias has had one target: refused with 409 once the scope check passed.
        op("rollback", Tenant, 409)
            .on("name", Function)
            .on("alias", Alias)
            .consumes(),
        op("history", Tenant, 200)
            .on("name", Function)
            .on("alias", Alias),
        op("stats", Tenant, 200).on("name", Function),
        op("triggers_delete", Tenant, 204)
            .on("id", Trigger)
            .consumes(),
        // Invocations, batches, usage.
        op("invocations_list", Tenant, 200).query("function", Function),
        op("invocations_get", Tenant, 200).on("id", Invocation),
        // Finished, so refused with 409, but only once the scope check has passed.
        op("cancel", Tenant, 409).on("id", Invocation),
        op("batches_get", Tenant, 200).on("id", Batch),
        op("results", Tenant, 200).on("id", Batch),
        op("usage_get", Tenant, 200),
        // API keys.
        op("api-keys_create", Tenant, 201).body(|_| json!({"name": "ci"})),
        op("api-keys_list", Tenant, 200),
        op("revoke", Tenant, 204).on("id", ApiKey).consumes(),
        // Any valid credential may read what it is.
        op("me", Tenant, 200),
        // Outgoing webhooks.
        op("secret", Tenant, 200),
        op("rotate", Tenant, 200).body(|_| json!({"overlap_s": 60})),
        op("deliveries", Tenant, 200).query("invocation_id", HookedInvocation),
        op("redeliver", Tenant, 202).on("id", Delivery),
        // OpenAI-compatible: a function is named as the `model`.
        op("models", Tenant, 200),
        op("chat_completions", Tenant, 200)
            .body(|o| {
                json!({"model": o.function, "max_tokens": 1,
                       "messages": [{"role": "user", "content": "Ada"}]})
            })
            .names_in_body(Function),
        op("completions", Tenant, 200)
            .body(|o| json!({"model": o.function, "prompt": "Ada", "max_tokens": 1}))
            .names_in_body(Function),
        op("embeddings", Tenant, 200).body(|_| json!({"model": MODEL, "input": "hi"})),
        // What every tenant shares, and the operator's.
        op("models_list", Global, 200),
        // The model registry, the operator's (`admin`) and each tenant's for its own models
        // and adapters (`models:write`): the owner's own model and adapter are read; an
        // upload registration (no file needed to accept it) in the owner's namespace; an
        // upload to a fresh one of the owner's whose bytes are not the registered sha256's;
        // a drain. Another tenant (without `admin`, which sees every model by design) finds
        // none of them.
        op("models_get", Tenant, 200).on("id", OwnModel),
        op("models_register", Global, 202).body(|o| {
            json!({"id": format!("{OWNER}.{}", o.fresh("model")), "source": {"upload": true},
                   "sha256": "0".repeat(64)})
        }),
        op("models_upload", Tenant, 422)
            .on("id", OwnModel)
            .body(|_| json!({}))
            .consumes(),
        op("models_delete", Tenant, 202)
            .on("id", OwnModel)
            .consumes(),
        op("adapters_register", Tenant, 202)
            .on("id", Model)
            .body(|o| {
                json!({"id": format!("{OWNER}.{}", o.fresh("adapter")), "source": {"upload": true},
                       "sha256": "0".repeat(64)})
            }),
        op("adapters_list", Tenant, 200).on("id", Model),
        op("adapters_get", Tenant, 200)
            .on("id", Model)
            .on("adapter", OwnAdapter),
        op("adapters_upload", Tenant, 422)
            .on("id", Model)
            .on("adapter", OwnAdapter)
            .body(|_| json!({}))
            .consumes(),
        op("adapters_delete", Tenant, 202)
            .on("id", Model)
            .on("adapter", OwnAdapter)
            .consumes(),
        op("devices", Global, 200),
        op("admin_create", Global, 201).body(|o| json!({"id": o.fresh("newco")})),
        op("admin_list", Global, 200),
        op("admin_get", Global, 200).on("id", ManagedTenant),
        op("update", Global, 200)
            .on("id", ManagedTenant)
            .body(|_| json!({"max_concurrency": 3})),
    ]
}

// ---------------------------------------------------------------------------------------------
// The document, and the table checked against it
// ---------------------------------------------------------------------------------------------

/// One operation as the document describes it.
struct Operation {
    id: String,
    method: Method,
    path: String,
    /// The ways in, any one of which suffices, each with the scopes it needs; `None` without
    /// `security`.
    ways: Option<Vec<Vec<String>>>,
}

impl Operation {
    fn path_params(&self) -> BTreeSet<&str> {
        self.path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect()
    }

    fn named(&self) -> String {
        format!("`{}` ({} {})", self.id, self.method, self.path)
    }
}

async fn document(s: &TestServer) -> Vec<Operation> {
    let response = s.request(Method::GET, "/openapi.json", None, None).await;
    let (status, doc) = genrt_tests::read(response).await;
    assert_eq!(status, 200, "{doc}");
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("a path item") {
            let id = op["operationId"]
                .as_str()
                .expect("an operationId")
                .to_owned();
            let ways = op["security"].as_array().map(|ways| {
                ways.iter()
                    .map(|way| {
                        let way = way.as_object().expect("a security requirement");
                        assert!(
                            way.keys().all(|k| k == "bearer"),
                            "`{id}`: a security scheme this suite does not know: {way:?}"
                        );
                        way.get("bearer")
                            .and_then(Value::as_array)
                            .map(|s| s.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
                            .unwrap_or_default()
                    })
                    .collect()
            });
            out.push(Operation {
                id,
                method: Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                path: path.clone(),
                ways,
            });
        }
    }
    out
}

/// Each operation with its fixture, once the table is found to cover the document exactly
/// and to agree with it.
fn covered(operations: Vec<Operation>) -> Vec<(Operation, Fixture)> {
    let mut table = fixtures();
    let mut problems = Vec::new();
    let mut pairs = Vec::new();
    for operation in operations {
        let Some(at) = table.iter().position(|f| f.operation == operation.id) else {
            problems.push(format!(
                "{} has no entry in the fixture table of tests/tests/scopes.rs: add one that \
                 says whether it is public, global or a tenant's, what its parameters name, \
                 and how to call it",
                operation.named()
            ));
            continue;
        };
        let fixture = table.swap_remove(at);
        problems.extend(disagreements(&operation, &fixture));
        pairs.push((operation, fixture));
    }
    for stale in table {
        problems.push(format!(
            "the fixture table has `{}`, which the document does not describe",
            stale.operation
        ));
    }
    assert!(
        problems.is_empty(),
        "the fixture table does not cover the OpenAPI document:\n  {}",
        problems.join("\n  ")
    );
    pairs
}

fn disagreements(operation: &Operation, fixture: &Fixture) -> Vec<String> {
    let name = operation.named();
    let mut problems = Vec::new();
    match (&operation.ways, fixture.access) {
        (None, Access::Public) => {}
        (Some(_), Access::Public) => problems.push(format!(
            "{name} is public in the table, but the document asks for a bearer credential"
        )),
        (None, _) => problems.push(format!(
            "{name} takes no credential by the document (no `security`), but the table says \
             it is {:?}",
            fixture.access
        )),
        (Some(ways), _) if ways.is_empty() => {
            problems.push(format!("{name} has an empty `security` list"))
        }
        (Some(ways), _) => {
            for scope in ways.iter().flatten() {
                if !ALL_SCOPES.contains(&scope.as_str()) {
                    problems.push(format!("{name} names an unknown scope `{scope}`"));
                }
            }
        }
    }
    let in_table: BTreeSet<&str> = fixture.path.iter().map(|(p, _)| *p).collect();
    if in_table != operation.path_params() {
        problems.push(format!(
            "{name} has path parameters {:?}, the table names {in_table:?}",
            operation.path_params()
        ));
    }
    let names = fixture
        .path
        .iter()
        .chain(&fixture.query)
        .map(|(_, r)| *r)
        .chain(fixture.body_names);
    for resource in names {
        match fixture.access {
            // The shared model a tenant's own adapter is registered on.
            Access::Tenant if resource == Resource::Model => {}
            Access::Tenant if !resource.is_a_tenants() => problems.push(format!(
                "{name} is a tenant's operation naming {resource:?}, which no tenant owns"
            )),
            Access::Global if resource.is_a_tenants() => problems.push(format!(
                "{name} names a tenant's {resource:?}: it is a tenant's operation, not global"
            )),
            _ => {}
        }
    }
    if fixture.consumes && fixture.path.is_empty() {
        problems.push(format!("{name} uses up a resource its path does not name"));
    }
    problems
}

// ---------------------------------------------------------------------------------------------
// The owner's resources
// ---------------------------------------------------------------------------------------------

/// What the owner made before the operations are called.
struct Owned {
    function: String,
    invocation: String,
    hooked_invocation: String,
    batch: String,
    api_key: String,
    trigger: String,
    delivery: String,
    tenant: String,
    /// The owner's own model and adapter (on the shared model), both awaiting their files.
    own_model: String,
    own_adapter: String,
    alias: String,
    /// What no answer to the other tenant may carry, whatever it asked for.
    marks: Vec<String>,
    made: AtomicU32,
}

impl Owned {
    /// A name not used before.
    fn fresh(&self, prefix: &str) -> String {
        format!("{prefix}-{}", self.made.fetch_add(1, Ordering::Relaxed))
    }

    /// The ids of everything the owner made, but those a request names itself.
    fn ids_but(&self, named: &[String]) -> Vec<String> {
        [
            &self.function,
            &self.invocation,
            &self.hooked_invocation,
            &self.batch,
            &self.api_key,
            &self.trigger,
            &self.delivery,
            &self.own_model,
            &self.own_adapter,
        ]
        .into_iter()
        .filter(|id| !named.contains(id))
        .cloned()
        .collect()
    }
}

/// A function on the default model with a one-token greedy generation; text given to it by
/// the OpenAI routes goes to `name`.
fn definition(name: &str) -> Value {
    json!({
        "name": name,
        "model": MODEL,
        "system": format!("You are terse; reference {PROMPT_MARK}."),
        "input_schema": {
            "type": "object",
            "properties": {"name": {"type": "string"}},
            "required": ["name"]
        },
        "prompt": "Say hi to {{ name }}.",
        "params": {"max_tokens": 1, "temperature": 0}
    })
}

/// The owner's token: every scope.
fn owner() -> String {
    token_scoped(OWNER, &ALL_SCOPES)
}

/// The rate limit is not under test, and each scenario sends a few hundred requests. Results
/// go to a receiver on loopback. Embeddings are on so that their route answers 200.
async fn serve(db: Db) -> TestServer {
    TestServer::start_adjusted(db, |c| {
        c.tenancy.rate_limit_rps = 0.0;
        // Room for the owner's own models and adapters the registry routes register.
        c.tenancy.max_private_models = 10_000;
        c.tenancy.max_adapters = 10_000;
        c.queue.poll_ms = 100;
        c.webhooks.allow_private = vec!["127.0.0.1".into()];
        for model in &mut c.models {
            model.threads = 1;
            model.embeddings = model.id.as_str() == MODEL;
        }
    })
    .await
}

async fn ok(s: &TestServer, method: Method, path: &str, body: Option<Value>) -> Value {
    let (status, got) = s.call(method.clone(), path, &owner(), body).await;
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {got}"
    );
    got
}

/// Polls `path` until `check` holds on its answer.
async fn until(s: &TestServer, path: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got = ok(s, Method::GET, path, None).await;
        if check(&got) {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "GET {path} never got there: {got}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn setup(s: &TestServer, receiver: &WebhookReceiver) -> Owned {
    let function = "recipe".to_owned();
    ok(
        s,
        Method::POST,
        "/v1/functions",
        Some(definition(&function)),
    )
    .await;
    let ran = ok(
        s,
        Method::POST,
        "/v1/functions/recipe/invoke",
        Some(json!({"input": {"name": "Ada"}})),
    )
    .await;
    let invocation = ran["invocation_id"].as_str().unwrap().to_owned();
    // Synchronous records are written behind; reads and cancels need them in the database.
    let left = s
        .server()
        .state()
        .records
        .flush(Duration::from_secs(10))
        .await;
    assert_eq!(left, 0, "invocation records written");
    let batch = ok(
        s,
        Method::POST,
        "/v1/functions/recipe/batches",
        Some(json!([{"name": "Bo"}])),
    )
    .await;
    let batch = batch["batch_id"].as_str().unwrap().to_owned();
    until(s, &format!("/v1/batches/{batch}"), |b| {
        b["status"] == "completed"
    })
    .await;
    let key = ok(
        s,
        Method::POST,
        "/v1/api-keys",
        Some(json!({"name": KEY_NAME, "scopes": ["functions:write"]})),
    )
    .await;
    let trigger = ok(
        s,
        Method::POST,
        "/v1/functions/recipe/triggers",
        Some(json!({})),
    )
    .await;
    let hooked = ok(
        s,
        Method::POST,
        "/v1/functions/recipe/invoke",
        Some(json!({"input": {"name": "Cy"}, "mode": "async",
                    "webhook": {"url": receiver.url("/hook")}})),
    )
    .await;
    let hooked_invocation = hooked["invocation_id"].as_str().unwrap().to_owned();
    let deliveries = until(
        s,
        &format!("/v1/webhooks/deliveries?invocation_id={hooked_invocation}"),
        |d| d["deliveries"][0]["status"] == "succeeded",
    )
    .await;
    let secrets = ok(s, Method::GET, "/v1/webhooks/secret", None).await;
    let tenant = "managed-co".to_owned();
    ok(
        s,
        Method::POST,
        "/v1/admin/tenants",
        Some(json!({"id": tenant})),
    )
    .await;
    let own_model = own_model(s, "own").await;
    let own_adapter = own_adapter(s, "style").await;
    let alias = own_alias(s, &function, "prod").await;
    let mut marks = vec![
        OWNER.to_owned(),
        PROMPT_MARK.to_owned(),
        KEY_NAME.to_owned(),
        key["prefix"].as_str().unwrap().to_owned(),
        key["secret"].as_str().unwrap().to_owned(),
        trigger["secret"].as_str().unwrap().to_owned(),
    ];
    marks.extend(
        secrets["secrets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned()),
    );
    Owned {
        function,
        invocation,
        hooked_invocation,
        batch,
        api_key: key["id"].as_str().unwrap().to_owned(),
        trigger: trigger["id"].as_str().unwrap().to_owned(),
        delivery: deliveries["deliveries"][0]["id"]
            .as_str()
            .unwrap()
            .to_owned(),
        tenant,
        own_model,
        own_adapter,
        alias,
        marks,
        made: AtomicU32::new(0),
    }
}

/// Points a new alias of the owner's function at its version 1.
async fn own_alias(s: &TestServer, function: &str, alias: &str) -> String {
    let path = format!("/v1/functions/{function}/aliases/{alias}");
    ok(s, Method::PUT, &path, Some(json!({"version": 1}))).await;
    alias.to_owned()
}

/// Registers a model of the owner's own, by upload (its file never comes).
async fn own_model(s: &TestServer, name: &str) -> String {
    let id = format!("{OWNER}.{name}");
    let body = json!({"id": id, "source": {"upload": true}, "sha256": "0".repeat(64),
                      "owner": OWNER});
    ok(s, Method::POST, "/v1/models", Some(body)).await;
    id
}

/// Registers an adapter of the owner's own on the shared model, by upload.
async fn own_adapter(s: &TestServer, name: &str) -> String {
    let id = format!("{OWNER}.{name}");
    let body = json!({"id": id, "source": {"upload": true}, "sha256": "0".repeat(64),
                      "owner": OWNER});
    ok(
        s,
        Method::POST,
        &format!("/v1/models/{MODEL}/adapters"),
        Some(body),
    )
    .await;
    id
}

/// The value for a parameter naming `resource`: the owner's, or, for a call that uses it up,
/// a new one.
async fn value(s: &TestServer, owned: &Owned, resource: Resource, fresh: bool) -> String {
    use Resource::*;
    if fresh {
        match resource {
            Function => {
                let name = owned.fresh("doomed");
                ok(s, Method::POST, "/v1/functions", Some(definition(&name))).await;
                return name;
            }
            ApiKey => {
                let body = json!({"name": "to-revoke", "scopes": ["functions:write"]});
                let key = ok(s, Method::POST, "/v1/api-keys", Some(body)).await;
                return key["id"].as_str().unwrap().to_owned();
            }
            Trigger => {
                let path = format!("/v1/functions/{}/triggers", owned.function);
                let trigger = ok(s, Method::POST, &path, Some(json!({}))).await;
                return trigger["id"].as_str().unwrap().to_owned();
            }
            OwnModel => return own_model(s, &owned.fresh("model")).await,
            OwnAdapter => return own_adapter(s, &owned.fresh("adapter")).await,
            Alias => return own_alias(s, &owned.function, &owned.fresh("alias")).await,
            _ => panic!("nothing makes a fresh {resource:?}"),
        }
    }
    match resource {
        Function => owned.function.clone(),
        Invocation => owned.invocation.clone(),
        HookedInvocation => owned.hooked_invocation.clone(),
        Batch => owned.batch.clone(),
        ApiKey => owned.api_key.clone(),
        Trigger => owned.trigger.clone(),
        Delivery => owned.delivery.clone(),
        Model => MODEL.to_owned(),
        OwnModel => owned.own_model.clone(),
        OwnAdapter => owned.own_adapter.clone(),
        ManagedTenant => owned.tenant.clone(),
        Alias => owned.alias.clone(),
    }
}

/// A request ready to send, with the owner's values it names.
struct Call {
    method: Method,
    path: String,
    body: Option<Value>,
    named: Vec<(Resource, String)>,
}

async fn call_for(s: &TestServer, owned: &Owned, op: &Operation, f: &Fixture) -> Call {
    let mut path = op.path.clone();
    let mut named = Vec::new();
    let last = f.path.len().saturating_sub(1);
    for (at, (param, resource)) in f.path.iter().enumerate() {
        // What a call uses up is the tenant's resource its path names last (a function's
        // alias, not the function; an adapter, not the shared model it is on).
        let fresh = f.consumes && resource.is_a_tenants() && at == last;
        let v = value(s, owned, *resource, fresh).await;
        path = path.replace(&format!("{{{param}}}"), &v);
        named.push((*resource, v));
    }
    let mut query = Vec::new();
    for (param, resource) in &f.query {
        let v = value(s, owned, *resource, false).await;
        query.push(format!("{param}={v}"));
        named.push((*resource, v));
    }
    if !query.is_empty() {
        path = format!("{path}?{}", query.join("&"));
    }
    if let Some(resource) = f.body_names {
        named.push((resource, value(s, owned, resource, false).await));
    }
    Call {
        method: op.method.clone(),
        path,
        body: f.body.map(|b| b(owned)),
        named,
    }
}

impl Call {
    async fn send(&self, s: &TestServer, token: Option<&str>) -> (u16, Value) {
        let response = s
            .request(self.method.clone(), &self.path, token, self.body.clone())
            .await;
        genrt_tests::read(response).await
    }
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

// ---------------------------------------------------------------------------------------------
// Scopes
// ---------------------------------------------------------------------------------------------

async fn every_operation_demands_the_scope_its_document_names(db: Db) {
    let s = serve(db).await;
    let operations = covered(document(&s).await);
    let receiver = WebhookReceiver::start().await;
    let owned = setup(&s, &receiver).await;
    let mut problems = Vec::new();
    for (op, f) in &operations {
        let name = op.named();
        let Some(ways) = &op.ways else {
            let call = call_for(&s, &owned, op, f).await;
            let (status, got) = call.send(&s, None).await;
            if status != f.granted || code(&got) == "missing_credentials" {
                problems.push(format!(
                    "{name} without a credential: {status} {got}, not {}",
                    f.granted
                ));
            }
            continue;
        };
        // A call that uses its resource up is refused first, then granted on the same
        // resource: the grant's answer (204, not 404) shows that the refusal left it alone.
        let mut call = call_for(&s, &owned, op, f).await;
        let needed: BTreeSet<&str> = ways.iter().flatten().map(String::as_str).collect();
        if ways.iter().all(|way| !way.is_empty()) {
            let lacking: Vec<&str> = ALL_SCOPES
                .into_iter()
                .filter(|s| !needed.contains(s))
                .collect();
            let (status, got) = call.send(&s, Some(&token_scoped(OWNER, &lacking))).await;
            if (status, code(&got)) != (403, "insufficient_scope") {
                problems.push(format!(
                    "{name} with every scope but {needed:?}: {status} {got}, not 403 \
                     insufficient_scope"
                ));
            }
        }
        for (i, way) in ways.iter().enumerate() {
            // A new resource, or a new body (a registration takes its id once), per way.
            if i > 0 && (f.consumes || f.body.is_some()) {
                call = call_for(&s, &owned, op, f).await;
            }
            let scopes: Vec<&str> = way.iter().map(String::as_str).collect();
            let (status, got) = call.send(&s, Some(&token_scoped(OWNER, &scopes))).await;
            if status != f.granted {
                problems.push(format!(
                    "{name} with only {scopes:?}: {status} {got}, not {}",
                    f.granted
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "operations disagree with their document ({} findings in {} operations):\n  {}",
        problems.len(),
        operations.len(),
        problems.join("\n  ")
    );
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Tenants
// ---------------------------------------------------------------------------------------------

/// The owner's view of one of its resources, to compare before and after another tenant's
/// call; `Null` when the owner no longer sees it.
async fn view(s: &TestServer, owned: &Owned, resource: Resource, id: &str) -> Value {
    use Resource::*;
    let (path, list) = match resource {
        Function => (format!("/v1/functions/{id}/versions"), None),
        Invocation | HookedInvocation => (format!("/v1/invocations/{id}"), None),
        Batch => (format!("/v1/batches/{id}"), None),
        ApiKey => ("/v1/api-keys".to_owned(), Some("api_keys")),
        Trigger => (
            format!("/v1/functions/{}/triggers", owned.function),
            Some("triggers"),
        ),
        Delivery => ("/v1/webhooks/deliveries".to_owned(), Some("deliveries")),
        OwnModel => (format!("/v1/models/{id}"), None),
        OwnAdapter => (format!("/v1/models/{MODEL}/adapters/{id}"), None),
        Alias => (
            format!("/v1/functions/{}/aliases/{id}/history", owned.function),
            None,
        ),
        Model | ManagedTenant => unreachable!("not a tenant's"),
    };
    let (status, got) = s.call(Method::GET, &path, &owner(), None).await;
    if status == 404 {
        return Value::Null;
    }
    assert_eq!(status, 200, "GET {path}: {got}");
    match list {
        None => got,
        Some(field) => got[field]
            .as_array()
            .unwrap()
            .iter()
            .find(|item| item["id"] == id)
            .cloned()
            .unwrap_or(Value::Null),
    }
}

async fn no_operation_reaches_another_tenants_resources(db: Db) {
    let s = serve(db).await;
    let operations = covered(document(&s).await);
    let receiver = WebhookReceiver::start().await;
    let owned = setup(&s, &receiver).await;
    let other = token_scoped(OTHER, &ALL_SCOPES);
    let all_but_admin: Vec<&str> = ALL_SCOPES.into_iter().filter(|s| *s != "admin").collect();
    let other_tenant = token_scoped(OTHER, &all_but_admin);
    let mut problems = Vec::new();
    let mut reached = 0;
    for (op, f) in &operations {
        if f.access != Access::Tenant {
            continue;
        }
        let name = op.named();
        let call = call_for(&s, &owned, op, f).await;
        let other = match f.path.iter().any(|(_, r)| r.is_in_the_registry()) {
            true => &other_tenant,
            false => &other,
        };
        // A refusal may repeat the id it was asked for; nothing else of the owner's.
        let values: Vec<String> = call.named.iter().map(|(_, v)| v.clone()).collect();
        let leaks = |got: &Value, asked: &[String]| -> Vec<String> {
            // What was asked for may come back (a tenant's own model is named after it).
            let text = asked
                .iter()
                .fold(got.to_string(), |text, v| text.replace(v.as_str(), ""));
            owned
                .marks
                .iter()
                .cloned()
                .chain(owned.ids_but(asked))
                .filter(|m| text.contains(m.as_str()))
                .collect()
        };
        // The shared model's adapters are a listing: the other tenant's view of them.
        let names_one = f.path.iter().any(|(_, r)| r.is_a_tenants()) || f.body_names.is_some();
        if !names_one {
            // A listing (its query may name the owner's resources): the other tenant's own,
            // which holds nothing of the owner's. Operations that make something make the
            // other tenant's own, and are not called.
            if op.method == Method::GET {
                let (status, got) = call.send(&s, Some(other)).await;
                let leaked = leaks(&got, &[]);
                if status != f.granted || !leaked.is_empty() {
                    problems.push(format!(
                        "{name} by {OTHER}: {status}, showing {leaked:?} of {OWNER}'s: {got}"
                    ));
                }
                reached += 1;
            }
            continue;
        }
        let mut before = Vec::new();
        for (resource, id) in call.named.iter().filter(|(r, _)| r.is_a_tenants()) {
            before.push(view(&s, &owned, *resource, id).await);
        }
        let (status, got) = call.send(&s, Some(other)).await;
        reached += 1;
        let leaked = leaks(&got, &values);
        if status != 404 || !code(&got).ends_with("not_found") || !leaked.is_empty() {
            problems.push(format!(
                "{name} on {OWNER}'s {:?} by {OTHER}: {status}, showing {leaked:?}: {got}",
                call.named
            ));
        }
        let mut after = Vec::new();
        for (resource, id) in call.named.iter().filter(|(r, _)| r.is_a_tenants()) {
            after.push(view(&s, &owned, *resource, id).await);
        }
        if before != after || before.contains(&Value::Null) {
            problems.push(format!(
                "{name} by {OTHER} changed {OWNER}'s {:?}: {before:?} became {after:?}",
                call.named
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{OTHER} reached {OWNER}'s resources ({} findings in {reached} calls):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
    // Something was called: the table's tenant operations did not all drop out.
    assert!(reached >= 20, "only {reached} calls made");
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// API keys
// ---------------------------------------------------------------------------------------------

/// API keys carry scopes as tokens do, and never more than their creator holds; only the
/// operator makes keys for other tenants.
async fn api_keys_carry_scopes_no_wider_than_their_creators(db: Db) {
    let s = serve(db).await;
    let (status, reader) = s
        .call(
            Method::POST,
            "/v1/api-keys",
            &owner(),
            Some(json!({"name": "reader", "scopes": ["invocations:read"]})),
        )
        .await;
    assert_eq!(status, 201, "{reader}");
    assert_eq!(reader["scopes"], json!(["invocations:read"]));
    let reader = reader["secret"].as_str().unwrap().to_owned();
    assert!(reader.starts_with("grt_"));
    let (status, got) = s
        .invoke(&reader, "scoped", json!({"input": {"name": "Fa"}}))
        .await;
    assert_eq!((status, code(&got)), (403, "insufficient_scope"), "{got}");
    let (status, got) = s.call(Method::GET, "/v1/invocations", &reader, None).await;
    assert_eq!(status, 200, "{got}");
    let (status, got) = s
        .call(
            Method::POST,
            "/v1/api-keys",
            &reader,
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!((status, code(&got)), (403, "insufficient_scope"), "{got}");

    let key_maker = token_scoped(OWNER, &["keys:write"]);
    let (status, got) = s
        .call(
            Method::POST,
            "/v1/api-keys",
            &key_maker,
            Some(json!({"name": "escalate", "scopes": ["functions:write"]})),
        )
        .await;
    assert_eq!((status, code(&got)), (403, "insufficient_scope"), "{got}");
    let (status, got) = s
        .call(
            Method::POST,
            "/v1/api-keys",
            &genrt_tests::token(OWNER),
            Some(json!({"name": "elsewhere", "tenant": OTHER})),
        )
        .await;
    assert_eq!(
        (status, code(&got)),
        (403, "insufficient_scope"),
        "only admin makes keys for other tenants: {got}"
    );
    // A token without a scope claim gets the tenant defaults, which never include admin.
    let (status, got) = s
        .call(
            Method::GET,
            "/v1/admin/tenants",
            &genrt_tests::token(OWNER),
            None,
        )
        .await;
    assert_eq!((status, code(&got)), (403, "insufficient_scope"), "{got}");
    s.stop().await;
}
