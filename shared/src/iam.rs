//! IAM, enough and no more: ONE table of the AWS actions each Lambda may call, per
//! resource ([`Function::grants`]). The actions are the ones the AWS adapters declare they
//! call (`DynamoStore::READ`, `SqsQueue::SEND`, ...; a test here reads the adapters and
//! fails on an SDK call whose action its adapter does not declare). The wiring reads the
//! table: a function is wired with a queue only if it is granted something on it (or the
//! queue triggers it), and reads a dead-letter queue's URL only if it is granted that queue.
//! A test in `infra` expands `template.yaml`'s policies and checks each function's role
//! grants exactly this table plus what its SQS event source needs ([`EVENT_SOURCE`]).

use std::fmt;

use crate::adapters::aws::{DynamoStore, KmsDataKeys, SecretsManagerStore, SqsQueue};
use crate::wiring::Function;

/// What a grant is on: the stack's resources, as `template.yaml` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    /// `Table` itself.
    Table,
    /// `Table`'s indexes (`${Table.Arn}/index/*`).
    TableIndexes,
    DispatchQueue,
    DispatchDlq,
    CallbackQueue,
    CallbackDlq,
    /// `OperatorTokenSecret`.
    OperatorToken,
    /// `MetaAppSecret`.
    MetaAppSecret,
    /// `MetaVerifyTokenSecret`.
    MetaVerifyToken,
    /// `AuditKeySecret`: the key that signs audit chain heads.
    AuditKey,
    /// `ConsoleCsrfKeySecret`: the key of the console's CSRF tokens.
    ConsoleCsrfKey,
    /// `TotpKeySecret`: the key that sealed users' TOTP seeds before KMS (`v1:` seeds,
    /// read only to open and reseal them).
    TotpKey,
    /// `TotpSeedKey`: the KMS key that wraps TOTP seeds' data keys (`v2:` seeds). Its
    /// grants are in its key policy, not the roles' policies.
    TotpSeedKey,
    /// Tenants' Meta access tokens only: `${StackName}/tenants/*/meta-token*`.
    MetaTokens,
    /// Every tenant's secrets: `${StackName}/tenants/*` (Meta tokens, callback secrets).
    TenantSecrets,
    /// Tenants' status-callback secrets only: `${StackName}/tenants/*/status-callback-secret*`.
    CallbackSecrets,
    /// `*`, for Secrets Manager's actions IAM authorises on no narrower resource
    /// ([`UNSCOPED`]: `ListSecrets`, which names no secret).
    AnySecret,
    /// `Table`, only the items whose partition key begins `CBFAIL#` (a tenant's records of
    /// given-up status callbacks): a statement on `Table` with the condition
    /// `ForAllValues:StringLike: {dynamodb:LeadingKeys: [CBFAIL#*]}`.
    CallbackFailureRecords,
}

/// Actions IAM authorises on `*` only (they name no resource): granted on
/// [`Resource::AnySecret`], and a grant of them on `*` covers nothing narrower.
pub const UNSCOPED: &[&str] = &["secretsmanager:ListSecrets"];

impl Resource {
    pub const ALL: [Resource; 18] = [
        Resource::Table,
        Resource::TableIndexes,
        Resource::DispatchQueue,
        Resource::DispatchDlq,
        Resource::CallbackQueue,
        Resource::CallbackDlq,
        Resource::OperatorToken,
        Resource::MetaAppSecret,
        Resource::MetaVerifyToken,
        Resource::AuditKey,
        Resource::ConsoleCsrfKey,
        Resource::TotpKey,
        Resource::TotpSeedKey,
        Resource::MetaTokens,
        Resource::TenantSecrets,
        Resource::CallbackSecrets,
        Resource::AnySecret,
        Resource::CallbackFailureRecords,
    ];

    /// How `template.yaml` refers to it: a logical id, or the ARN pattern (`!Sub`) after
    /// the stack's own prefix.
    pub const fn in_template(self) -> &'static str {
        match self {
            Resource::Table => "Table",
            Resource::TableIndexes => "${Table.Arn}/index/*",
            Resource::DispatchQueue => "DispatchQueue",
            Resource::DispatchDlq => "DispatchDeadLetterQueue",
            Resource::CallbackQueue => "StatusCallbackQueue",
            Resource::CallbackDlq => "StatusCallbackDeadLetterQueue",
            Resource::OperatorToken => "OperatorTokenSecret",
            Resource::MetaAppSecret => "MetaAppSecret",
            Resource::MetaVerifyToken => "MetaVerifyTokenSecret",
            Resource::AuditKey => "AuditKeySecret",
            Resource::ConsoleCsrfKey => "ConsoleCsrfKeySecret",
            Resource::TotpKey => "TotpKeySecret",
            Resource::TotpSeedKey => "TotpSeedKey",
            Resource::MetaTokens => "secret:${AWS::StackName}/tenants/*/meta-token*",
            Resource::TenantSecrets => "secret:${AWS::StackName}/tenants/*",
            Resource::CallbackSecrets => {
                "secret:${AWS::StackName}/tenants/*/status-callback-secret*"
            }
            Resource::AnySecret => "*",
            Resource::CallbackFailureRecords => "Table?dynamodb:LeadingKeys=CBFAIL#*",
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.in_template())
    }
}

/// Some actions on one resource. A function's grants on a resource are the union of its
/// rows for it.
#[derive(Clone, Copy, Debug)]
pub struct Grant {
    pub resource: Resource,
    pub actions: &'static [&'static str],
}

const fn on(resource: Resource, actions: &'static [&'static str]) -> Grant {
    Grant { resource, actions }
}

/// What Lambda's SQS event source mapping calls with the function's role on the queue
/// that triggers it (SAM attaches the managed `AWSLambdaSQSQueueExecutionRole`, whose
/// grant is on `*`; the template narrows it back to the trigger with a `Deny`).
pub const EVENT_SOURCE: &[&str] = &[
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:GetQueueAttributes",
];

use Resource::*;

/// The table itself and its index, as every function that reads and writes state uses it.
const STATE: [Grant; 3] = [
    on(Table, DynamoStore::READ),
    on(Table, DynamoStore::WRITE),
    on(TableIndexes, DynamoStore::INDEX_READ),
];

const SEND_API: &[Grant] = &[
    STATE[0],
    STATE[1],
    STATE[2],
    // A campaign's recipients' opt-outs and pairings, read in batches at its creation.
    on(Table, DynamoStore::BATCH_READ),
    // Accepted messages and broadcast fan-outs.
    on(DispatchQueue, SqsQueue::SEND),
    // A scheduled message cancelled (`DELETE /v1/messages/{id}`) queues its `cancelled`
    // status callback.
    on(CallbackQueue, SqsQueue::SEND),
    // A bearer token is compared with the operator token before it is looked up as a key.
    on(OperatorToken, SecretsManagerStore::READ),
    // Audit events are appended here: the chain's head is signed.
    on(AuditKey, SecretsManagerStore::READ),
];

const ADMIN_API: &[Grant] = &[
    STATE[0],
    STATE[1],
    STATE[2],
    // `POST /v1/platform/retention/run` is the daily sweep, run on demand.
    on(Table, DynamoStore::SWEEP),
    on(OperatorToken, SecretsManagerStore::READ),
    on(AuditKey, SecretsManagerStore::READ),
    // Users' TOTP seeds are sealed (enrolment) and opened (confirmation, login) here:
    // under a data key from KMS; `v1:` seeds from before KMS with the old key, to reseal.
    on(TotpSeedKey, KmsDataKeys::GENERATE),
    on(TotpSeedKey, KmsDataKeys::DECRYPT),
    on(TotpKey, SecretsManagerStore::READ),
    // The template catalogue's sync reads Meta with the tenant's own token (onboarding,
    // `POST /v1/templates/sync`).
    on(MetaTokens, SecretsManagerStore::READ),
    // Tenants' Meta tokens and callback secrets are written here, never read; a Meta
    // token is removed on a failed onboarding (a callback turned off keeps its secret,
    // replaced by the next PUT; the retention run's close-out removes both).
    on(TenantSecrets, SecretsManagerStore::WRITE),
    on(TenantSecrets, SecretsManagerStore::DELETE),
    // `PUT /v1/platform/tenants/{id}/meta-token` puts the new token into the tenant's
    // secret (`WRITE` above); one scheduled for deletion is found (described: never a
    // value) and restored first.
    on(MetaTokens, SecretsManagerStore::RESTORE),
    // A new callback secret is staged, then made current once its setting names it
    // (`callbacks::put_setting`): which version is current is described (its id, never
    // a value: no callback secret is read here).
    on(CallbackSecrets, SecretsManagerStore::PROMOTE),
    // Dead letters: listed and redriven (received, sent back to the source, deleted).
    on(DispatchDlq, SqsQueue::DEAD_LETTERS),
    on(DispatchQueue, SqsQueue::SEND),
    on(CallbackDlq, SqsQueue::DEAD_LETTERS),
    on(CallbackQueue, SqsQueue::SEND),
];

const WEBHOOK: &[Grant] = &[
    STATE[0],
    STATE[1],
    STATE[2],
    on(MetaAppSecret, SecretsManagerStore::READ),
    on(MetaVerifyToken, SecretsManagerStore::READ),
    on(CallbackQueue, SqsQueue::SEND),
    // An approved template's re-read from Meta, for the dispatcher (it holds the tokens).
    on(DispatchQueue, SqsQueue::SEND),
    // Meta's account_update suspends tenants, audited.
    on(AuditKey, SecretsManagerStore::READ),
];

const DISPATCHER: &[Grant] = &[
    STATE[0],
    STATE[1],
    STATE[2],
    // The sending tenant's Meta token; never a callback secret (the callback function's).
    on(MetaTokens, SecretsManagerStore::READ),
    // Backoff between attempts is a visibility timeout; a broadcast's fan-out continues
    // on the same queue.
    on(DispatchQueue, SqsQueue::BACKOFF),
    on(DispatchQueue, SqsQueue::SEND),
    on(CallbackQueue, SqsQueue::SEND),
    // A tenant suspended on Meta's signal is audited.
    on(AuditKey, SecretsManagerStore::READ),
];

const STATUS_CALLBACK: &[Grant] = &[
    // The tenant's callback setting, by key.
    on(Table, DynamoStore::GET),
    // The tenant's record of a callback given up (`CBFAIL#{t}` / `CBFAIL#…`): one
    // unconditional put, nothing updated or deleted, and only in those partitions: the
    // function that calls tenants' URLs can write no key, tenant or audit item.
    on(CallbackFailureRecords, DynamoStore::PUT),
    on(CallbackSecrets, SecretsManagerStore::READ),
    on(CallbackQueue, SqsQueue::BACKOFF),
];

const CONSOLE: &[Grant] = &[
    STATE[0],
    STATE[1],
    STATE[2],
    // Its campaign form creates a broadcast through the API in process (`BATCH_READ`, as
    // the send API's).
    on(Table, DynamoStore::BATCH_READ),
    // The send form queues the message like `POST /v1/messages`.
    on(DispatchQueue, SqsQueue::SEND),
    // A message or campaign cancelled from its pages queues its `cancelled` status
    // callbacks, as through the API (without, each was left owed for a later run).
    on(CallbackQueue, SqsQueue::SEND),
    on(ConsoleCsrfKey, SecretsManagerStore::READ),
    // Its sign-in and 2FA pages call the users API in process: TOTP seeds are sealed
    // and opened (and `v1:` seeds resealed).
    on(TotpSeedKey, KmsDataKeys::GENERATE),
    on(TotpSeedKey, KmsDataKeys::DECRYPT),
    on(TotpKey, SecretsManagerStore::READ),
    // Its actions pass the API's access middleware, which appends audit events.
    on(AuditKey, SecretsManagerStore::READ),
    // The settings page sets a tenant's status-callback secret (turning callbacks off
    // keeps it: nothing here deletes a secret).
    on(CallbackSecrets, SecretsManagerStore::WRITE),
    // ... staged, then made current once its setting names it (which version is current
    // is described: its id, never a value).
    on(CallbackSecrets, SecretsManagerStore::PROMOTE),
    // The catalogue page's "Sync with Meta" reads Meta with the tenant's own token.
    on(MetaTokens, SecretsManagerStore::READ),
];

const RETENTION: &[Grant] = &[
    STATE[0],
    STATE[1],
    STATE[2],
    on(Table, DynamoStore::SWEEP),
    on(TenantSecrets, SecretsManagerStore::DELETE),
    // The retention report is audited.
    on(AuditKey, SecretsManagerStore::READ),
    // The daily template catalogue sync reads Meta with each tenant's own token.
    on(MetaTokens, SecretsManagerStore::READ),
    // Meta-token secrets of no tenant (an onboarding that failed or died between its
    // secret and its tenant) are found by listing the tenants' secrets by name prefix
    // (`retention::delete_orphan_secrets`; names and dates, never a value), then deleted
    // (`DELETE` above). ListSecrets names no secret: IAM grants it on `*` only. Here
    // only: the on-demand run (`POST /v1/platform/retention/run`) does not list.
    on(AnySecret, SecretsManagerStore::LIST),
    // A message its lost dispatch job left unsent, settled, has its status callback queued.
    on(CallbackQueue, SqsQueue::SEND),
];

impl Function {
    /// The one table: every AWS action this function may call, per resource.
    pub const fn grants(self) -> &'static [Grant] {
        match self {
            Function::SendApi => SEND_API,
            Function::AdminApi => ADMIN_API,
            Function::Webhook => WEBHOOK,
            Function::Dispatcher => DISPATCHER,
            Function::StatusCallback => STATUS_CALLBACK,
            Function::Retention => RETENTION,
            Function::Console => CONSOLE,
        }
    }

    /// The queue whose SQS event source invokes it.
    pub const fn trigger(self) -> Option<Resource> {
        match self {
            Function::Dispatcher => Some(Resource::DispatchQueue),
            Function::StatusCallback => Some(Resource::CallbackQueue),
            _ => None,
        }
    }

    /// Granted anything on `resource` (or invoked by it).
    pub fn granted(self, resource: Resource) -> bool {
        self.trigger() == Some(resource) || self.grants().iter().any(|g| g.resource == resource)
    }

    /// Every action its role needs, per resource: the table plus its event source's.
    pub fn needs(
        self,
    ) -> std::collections::BTreeMap<Resource, std::collections::BTreeSet<&'static str>> {
        let mut out: std::collections::BTreeMap<_, std::collections::BTreeSet<_>> =
            Default::default();
        for g in self.grants() {
            out.entry(g.resource)
                .or_default()
                .extend(g.actions.iter().copied());
        }
        if let Some(q) = self.trigger() {
            out.entry(q)
                .or_default()
                .extend(EVENT_SOURCE.iter().copied());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;

    /// SDK operations (the fluent builder's method) and the IAM actions they need.
    /// TransactWriteItems is authorised per item (below), batch SQS calls by the single one.
    const OPERATIONS: &[(&str, &[&str])] = &[
        ("get_item", &["dynamodb:GetItem"]),
        ("put_item", &["dynamodb:PutItem"]),
        ("update_item", &["dynamodb:UpdateItem"]),
        ("delete_item", &["dynamodb:DeleteItem"]),
        ("query", &["dynamodb:Query"]),
        ("scan", &["dynamodb:Scan"]),
        ("batch_write_item", &["dynamodb:BatchWriteItem"]),
        ("batch_get_item", &["dynamodb:BatchGetItem"]),
        ("transact_get_items", &["dynamodb:GetItem"]),
        ("describe_table", &["dynamodb:DescribeTable"]),
        ("send_message", &["sqs:SendMessage"]),
        ("send_message_batch", &["sqs:SendMessage"]),
        ("receive_message", &["sqs:ReceiveMessage"]),
        ("delete_message", &["sqs:DeleteMessage"]),
        ("delete_message_batch", &["sqs:DeleteMessage"]),
        (
            "change_message_visibility",
            &["sqs:ChangeMessageVisibility"],
        ),
        (
            "change_message_visibility_batch",
            &["sqs:ChangeMessageVisibility"],
        ),
        ("get_queue_attributes", &["sqs:GetQueueAttributes"]),
        ("start_message_move_task", &["sqs:StartMessageMoveTask"]),
        ("get_secret_value", &["secretsmanager:GetSecretValue"]),
        ("put_secret_value", &["secretsmanager:PutSecretValue"]),
        ("create_secret", &["secretsmanager:CreateSecret"]),
        ("delete_secret", &["secretsmanager:DeleteSecret"]),
        ("describe_secret", &["secretsmanager:DescribeSecret"]),
        (
            "update_secret_version_stage",
            &["secretsmanager:UpdateSecretVersionStage"],
        ),
        ("tag_resource", &["secretsmanager:TagResource"]),
        ("list_secrets", &["secretsmanager:ListSecrets"]),
        ("generate_data_key", &["kms:GenerateDataKey"]),
        ("decrypt", &["kms:Decrypt"]),
    ];

    /// The items of a TransactWriteItems call, by their builders.
    const TRANSACT_ITEMS: &[(&str, &str)] = &[
        ("Put::builder()", "dynamodb:PutItem"),
        ("Update::builder()", "dynamodb:UpdateItem"),
        ("Delete::builder()", "dynamodb:DeleteItem"),
        ("ConditionCheck::builder()", "dynamodb:ConditionCheckItem"),
    ];

    fn called_in(files: &[&Path]) -> BTreeSet<&'static str> {
        let mut called = BTreeSet::new();
        for file in files {
            let text = std::fs::read_to_string(file).expect("adapter source");
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            for (op, actions) in OPERATIONS {
                if code.contains(&format!(".{op}()")) {
                    called.extend(actions.iter().copied());
                }
            }
            for (builder, action) in TRANSACT_ITEMS {
                if code.contains(builder) {
                    called.insert(*action);
                }
            }
        }
        called
    }

    fn rs_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                rs_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn every_aws_call_an_adapter_makes_is_an_action_it_declares() {
        let aws = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/adapters/aws");
        let mut dynamo = vec![aws.join("dynamodb.rs"), aws.join("users.rs")];
        rs_files(&aws.join("dynamodb"), &mut dynamo);
        /// An adapter, its source files, and the action lists it declares.
        type Case = (
            &'static str,
            Vec<std::path::PathBuf>,
            Vec<&'static [&'static str]>,
        );
        let cases: [Case; 4] = [
            (
                "DynamoStore",
                dynamo,
                vec![
                    DynamoStore::GET,
                    DynamoStore::READ,
                    DynamoStore::BATCH_READ,
                    DynamoStore::WRITE,
                    DynamoStore::INDEX_READ,
                    DynamoStore::SWEEP,
                ],
            ),
            (
                "SqsQueue",
                vec![aws.join("sqs.rs")],
                vec![
                    SqsQueue::SEND,
                    SqsQueue::BACKOFF,
                    SqsQueue::CONSUME,
                    SqsQueue::DEAD_LETTERS,
                ],
            ),
            (
                "SecretsManagerStore",
                vec![aws.join("secrets_manager.rs")],
                vec![
                    SecretsManagerStore::READ,
                    SecretsManagerStore::WRITE,
                    SecretsManagerStore::DELETE,
                    SecretsManagerStore::PROMOTE,
                    SecretsManagerStore::LIST,
                ],
            ),
            (
                "KmsDataKeys",
                vec![aws.join("kms.rs")],
                vec![KmsDataKeys::GENERATE, KmsDataKeys::DECRYPT],
            ),
        ];
        for (adapter, files, declared) in cases {
            let files: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
            let called = called_in(&files);
            let declared: BTreeSet<&str> = declared.into_iter().flatten().copied().collect();
            let undeclared: Vec<_> = called.difference(&declared).collect();
            assert!(
                undeclared.is_empty(),
                "{adapter} calls {undeclared:?} without declaring it (add it to its action \
                 lists, then to the functions' grants in iam.rs and template.yaml)"
            );
            let unused: Vec<_> = declared.difference(&called).collect();
            assert!(
                unused.is_empty(),
                "{adapter} declares {unused:?} but never calls it"
            );
        }
    }

    #[test]
    fn only_the_sweep_scans_the_table_and_only_its_callers_may() {
        for f in Function::ALL {
            let scans = f.needs().values().any(|a| a.contains("dynamodb:Scan"));
            assert_eq!(
                scans,
                matches!(f, Function::Retention | Function::AdminApi),
                "{f:?}"
            );
        }
    }

    #[test]
    fn only_the_retention_function_may_list_secrets_and_only_on_any_secret() {
        for f in Function::ALL {
            for (r, actions) in f.needs() {
                let lists = actions.contains("secretsmanager:ListSecrets");
                assert_eq!(
                    lists,
                    f == Function::Retention && r == Resource::AnySecret,
                    "{f:?} on {r:?}"
                );
                if r == Resource::AnySecret {
                    assert!(actions.iter().all(|a| UNSCOPED.contains(a)), "{f:?}");
                }
            }
        }
    }

    #[test]
    fn only_the_functions_that_seal_totp_seeds_may_use_their_kms_key() {
        for f in Function::ALL {
            let uses = f.needs().contains_key(&Resource::TotpSeedKey);
            assert_eq!(
                uses,
                matches!(f, Function::AdminApi | Function::Console),
                "{f:?}"
            );
            let kms_elsewhere = f.needs().iter().any(|(r, a)| {
                *r != Resource::TotpSeedKey && a.iter().any(|a| a.starts_with("kms:"))
            });
            assert!(!kms_elsewhere, "{f:?}");
        }
    }

    #[test]
    fn a_triggered_function_needs_its_event_source_actions_on_its_queue_only() {
        let needs = Function::Dispatcher.needs();
        for a in EVENT_SOURCE {
            assert!(needs[&Resource::DispatchQueue].contains(a));
        }
        assert!(!needs.contains_key(&Resource::DispatchDlq));
        assert!(!needs.contains_key(&Resource::CallbackDlq));
    }
}
