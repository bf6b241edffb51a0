//! The check that `template.yaml` grants each function exactly what `kirim::iam` lists:
//! its `Policies` expanded (SAM policy templates as AWS's SAM policy template list defines
//! them, explicit `Statement`s, `Deny`s applied) plus what SAM attaches for an SQS event
//! source, and what a KMS key's policy lets the function's role do on that key (a key
//! policy is the only grant on a KMS key here), compared per resource with
//! `Function::needs()`.

use std::collections::{BTreeMap, BTreeSet};

use kirim::iam::Resource;
use kirim::wiring::Function;
use serde_yaml::Value;

const TEMPLATE: &str = include_str!("../../template.yaml");

/// Actions per resource name (a `Resource::in_template` name, `*`, or what the template
/// says for anything else).
type Grants = BTreeMap<String, BTreeSet<String>>;

const CRUD: &[&str] = &[
    "dynamodb:GetItem",
    "dynamodb:DeleteItem",
    "dynamodb:PutItem",
    "dynamodb:Scan",
    "dynamodb:Query",
    "dynamodb:UpdateItem",
    "dynamodb:BatchWriteItem",
    "dynamodb:BatchGetItem",
    "dynamodb:DescribeTable",
    "dynamodb:ConditionCheckItem",
];
const READ: &[&str] = &[
    "dynamodb:GetItem",
    "dynamodb:Scan",
    "dynamodb:Query",
    "dynamodb:BatchGetItem",
    "dynamodb:DescribeTable",
];
const POLLER: &[&str] = &[
    "sqs:ChangeMessageVisibility",
    "sqs:ChangeMessageVisibilityBatch",
    "sqs:DeleteMessage",
    "sqs:DeleteMessageBatch",
    "sqs:GetQueueAttributes",
    "sqs:ReceiveMessage",
];
/// The managed `AWSLambdaSQSQueueExecutionRole` SAM attaches for an SQS event (its logs
/// actions are the basic execution role's too and not checked here), on `*`.
const SQS_EXECUTION_ROLE: &[&str] = &[
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:GetQueueAttributes",
];

/// `sqs:SendMessage*` (SQSSendMessagePolicy) matches one IAM action: SendMessageBatch is
/// authorised as SendMessage. Any other wildcard is refused, to be spelt out.
fn expand_action(a: &str) -> Result<Vec<String>, String> {
    match a {
        "sqs:SendMessage*" => Ok(vec!["sqs:SendMessage".into()]),
        a if a.contains('*') => Err(format!("unmodelled wildcard action {a}")),
        a => Ok(vec![a.to_owned()]),
    }
}

fn service(action: &str) -> &str {
    action.split(':').next().unwrap_or_default()
}

fn resource_service(r: Resource) -> &'static str {
    match r {
        Resource::Table | Resource::TableIndexes | Resource::CallbackFailureRecords => "dynamodb",
        Resource::DispatchQueue
        | Resource::DispatchDlq
        | Resource::CallbackQueue
        | Resource::CallbackDlq => "sqs",
        Resource::OperatorToken
        | Resource::MetaAppSecret
        | Resource::MetaVerifyToken
        | Resource::AuditKey
        | Resource::ConsoleCsrfKey
        | Resource::TotpKey
        | Resource::MetaTokens
        | Resource::TenantSecrets
        | Resource::CallbackSecrets
        | Resource::AnySecret => "secretsmanager",
        Resource::TotpSeedKey => "kms",
    }
}

/// The name a template reference resolves to.
fn resource_name(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Tagged(t) => {
            let inner = t.value.as_str().unwrap_or_default();
            match t.tag.to_string().trim_start_matches('!') {
                "Ref" => inner.to_owned(),
                "GetAtt" => inner.split('.').next().unwrap_or_default().to_owned(),
                "Sub" => match inner.split_once(":secret:") {
                    Some((_, tail)) => format!("secret:{tail}"),
                    None => inner.to_owned(),
                },
                other => format!("!{other} {inner}"),
            }
        }
        other => format!("{other:?}"),
    }
}

/// The one pattern of a `{ForAllValues:StringLike: {dynamodb:LeadingKeys: [pattern]}}`
/// condition, and nothing else in it; `None` for any other condition.
fn leading_keys(c: &Value) -> Option<String> {
    let outer = c.as_mapping()?;
    if outer.len() != 1 {
        return None;
    }
    let inner = outer.get("ForAllValues:StringLike")?.as_mapping()?;
    if inner.len() != 1 {
        return None;
    }
    match list(inner.get("dynamodb:LeadingKeys")).as_slice() {
        [Value::String(p)] if !p.is_empty() && p != "*" => Some(p.clone()),
        _ => None,
    }
}

fn list(v: Option<&Value>) -> Vec<Value> {
    match v {
        Some(Value::Sequence(s)) => s.clone(),
        Some(v) => vec![v.clone()],
        None => Vec::new(),
    }
}

#[derive(Default)]
struct Role {
    allow: Vec<(String, String)>,
    deny: Vec<(String, Vec<String>, bool)>,
    problems: Vec<String>,
}

impl Role {
    fn allow(&mut self, actions: &[&str], resources: &[String]) {
        for a in actions {
            match expand_action(a) {
                Ok(expanded) => {
                    for a in expanded {
                        for r in resources {
                            self.allow.push((r.clone(), a.clone()));
                        }
                    }
                }
                Err(e) => self.problems.push(e),
            }
        }
    }

    fn statement(&mut self, st: &Value) {
        // A NotAction allows everything it does not name: not modelled, so never passed.
        if st.get("NotAction").is_some() || st.get("Action").is_none() {
            self.problems
                .push(format!("a statement needs Action, not NotAction: {st:?}"));
            return;
        }
        let actions: Vec<String> = list(st.get("Action"))
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect();
        let actions: Vec<&str> = actions.iter().map(String::as_str).collect();
        // One condition is modelled: a table's items by the leading part of their partition
        // key (`ForAllValues:StringLike` on `dynamodb:LeadingKeys`, one pattern), which
        // names the resource `Table?dynamodb:LeadingKeys={pattern}`. Any other is refused.
        let mut narrowed = None;
        if let Some(c) = st.get("Condition") {
            match leading_keys(c) {
                Some(pattern) => narrowed = Some(pattern),
                None => {
                    self.problems.push(format!(
                        "a statement with a Condition is not modelled: {st:?}"
                    ));
                }
            }
        }
        let (resources, not) = match (st.get("Resource"), st.get("NotResource")) {
            (Some(r), None) => (list(Some(r)), false),
            (None, Some(r)) => (list(Some(r)), true),
            _ => {
                self.problems
                    .push(format!("a statement needs Resource or NotResource: {st:?}"));
                return;
            }
        };
        let resources: Vec<String> = resources
            .iter()
            .map(resource_name)
            .map(|r| match &narrowed {
                Some(p) => format!("{r}?dynamodb:LeadingKeys={p}"),
                None => r,
            })
            .collect();
        match (st.get("Effect").and_then(Value::as_str), not) {
            (Some("Allow"), false) => self.allow(&actions, &resources),
            (Some("Deny"), _) => {
                for a in actions {
                    match expand_action(a) {
                        Ok(ex) => {
                            for a in ex {
                                self.deny.push((a, resources.clone(), not));
                            }
                        }
                        Err(e) => self.problems.push(e),
                    }
                }
            }
            _ => self.problems.push(format!(
                "unmodelled statement (Allow with NotResource?): {st:?}"
            )),
        }
    }

    fn policy(&mut self, p: &Value) {
        let Some(map) = p.as_mapping() else {
            self.problems.push(format!(
                "managed policy {p:?} is not modelled: use a statement"
            ));
            return;
        };
        for (name, args) in map {
            let param = |key: &str| args.get(key).map(resource_name).unwrap_or_default();
            match name.as_str().unwrap_or_default() {
                "Statement" => {
                    for st in list(Some(args)) {
                        self.statement(&st);
                    }
                }
                t @ ("DynamoDBCrudPolicy" | "DynamoDBReadPolicy") => {
                    let table = param("TableName");
                    let resources = [table.clone(), format!("${{{table}.Arn}}/index/*")];
                    let actions = if t == "DynamoDBCrudPolicy" {
                        CRUD
                    } else {
                        READ
                    };
                    self.allow(actions, &resources);
                }
                "SQSSendMessagePolicy" => self.allow(&["sqs:SendMessage*"], &[param("QueueName")]),
                "SQSPollerPolicy" => self.allow(POLLER, &[param("QueueName")]),
                "AWSSecretsManagerGetSecretValuePolicy" => {
                    self.allow(&["secretsmanager:GetSecretValue"], &[param("SecretArn")])
                }
                other => self
                    .problems
                    .push(format!("SAM policy template {other} is not modelled here")),
            }
        }
    }

    /// Allows minus denies, `*` spelt out over the stack's resources of the action's
    /// service (and kept, for everything else); an action IAM authorises on `*` only
    /// (`kirim::iam::UNSCOPED`) stays on `*`: it covers no narrower resource.
    fn effective(&self) -> Grants {
        let mut out = Grants::new();
        for (r, a) in &self.allow {
            out.entry(r.clone()).or_default().insert(a.clone());
            if r == "*" && !kirim::iam::UNSCOPED.contains(&a.as_str()) {
                for known in Resource::ALL {
                    if resource_service(known) == service(a) {
                        out.entry(known.in_template().to_owned())
                            .or_default()
                            .insert(a.clone());
                    }
                }
            }
        }
        for (a, resources, not) in &self.deny {
            for (r, actions) in out.iter_mut() {
                if resources.contains(r) != *not {
                    actions.remove(a);
                }
            }
        }
        out.retain(|_, a| !a.is_empty());
        out
    }
}

fn function_props<'a>(doc: &'a Value, logical: &str) -> Option<&'a Value> {
    doc.get("Resources")?.get(logical)?.get("Properties")
}

/// What the template grants `function`'s role, and anything it could not read.
fn granted(doc: &Value, function: Function) -> (Grants, Vec<String>) {
    let mut role = Role::default();
    let Some(props) = function_props(doc, function.logical_id()) else {
        return (Grants::new(), vec!["not in the template".into()]);
    };
    // A function given a role of its own has SAM ignore its Policies: what it may do is
    // then elsewhere, and this check would read the wrong grants.
    if props.get("Role").is_some() {
        role.problems
            .push("a Role of its own: its grants are not the Policies read here".into());
    }
    for p in list(props.get("Policies")) {
        role.policy(&p);
    }
    key_policies(doc, function, &mut role);
    if let Some(events) = props.get("Events").and_then(Value::as_mapping) {
        for (_, event) in events {
            if event.get("Type").and_then(Value::as_str) == Some("SQS") {
                role.allow(SQS_EXECUTION_ROLE, &["*".to_owned()]);
            }
        }
    }
    (role.effective(), role.problems)
}

/// The KMS keys of the template: logical id and key policy statements.
fn kms_keys(doc: &Value) -> Vec<(String, Vec<Value>)> {
    doc.get("Resources")
        .and_then(Value::as_mapping)
        .into_iter()
        .flatten()
        .filter(|(_, r)| r.get("Type").and_then(Value::as_str) == Some("AWS::KMS::Key"))
        .filter_map(|(k, r)| {
            let statements = r.get("Properties")?.get("KeyPolicy")?.get("Statement");
            Some((k.as_str()?.to_owned(), list(statements)))
        })
        .collect()
}

/// The principals a key policy statement names (`Principal.AWS`), as resource names.
fn principals(st: &Value) -> Vec<String> {
    list(st.get("Principal").and_then(|p| p.get("AWS")))
        .iter()
        .map(resource_name)
        .collect()
}

/// What each key policy lets `function`'s role (SAM's `{Function}Role`) do on that key.
fn key_policies(doc: &Value, function: Function, role: &mut Role) {
    let me = format!("{}Role", function.logical_id());
    for (key, statements) in kms_keys(doc) {
        for st in statements {
            if !principals(&st).contains(&me) {
                continue;
            }
            if st.get("Effect").and_then(Value::as_str) != Some("Allow")
                || st.get("Condition").is_some()
            {
                role.problems
                    .push(format!("unmodelled key policy statement on {key}: {st:?}"));
                continue;
            }
            let actions: Vec<String> = list(st.get("Action"))
                .iter()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect();
            let actions: Vec<&str> = actions.iter().map(String::as_str).collect();
            role.allow(&actions, std::slice::from_ref(&key));
        }
    }
}

/// The table's grants, by template name.
fn needed(function: Function) -> Grants {
    function
        .needs()
        .into_iter()
        .map(|(r, a)| {
            (
                r.in_template().to_owned(),
                a.into_iter().map(str::to_owned).collect(),
            )
        })
        .collect()
}

/// A readable difference, empty when they agree.
fn diff(function: Function, granted: &Grants, needed: &Grants) -> Vec<String> {
    let mut lines = Vec::new();
    let names: BTreeSet<&String> = granted.keys().chain(needed.keys()).collect();
    let none = BTreeSet::new();
    for r in names {
        let g = granted.get(r).unwrap_or(&none);
        let n = needed.get(r).unwrap_or(&none);
        for a in g.difference(n) {
            lines.push(format!(
                "{}: template grants {a} on {r}, kirim::iam does not list it",
                function.logical_id()
            ));
        }
        for a in n.difference(g) {
            lines.push(format!(
                "{}: kirim::iam lists {a} on {r}, the template does not grant it",
                function.logical_id()
            ));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_function_is_granted_exactly_the_actions_the_iam_table_lists() {
        let doc: Value = serde_yaml::from_str(TEMPLATE).expect("template");
        let mut report = Vec::new();
        for f in Function::ALL {
            let (g, problems) = granted(&doc, f);
            report.extend(
                problems
                    .into_iter()
                    .map(|p| format!("{}: {p}", f.logical_id())),
            );
            report.extend(diff(f, &g, &needed(f)));
        }
        assert!(
            report.is_empty(),
            "template.yaml and kirim::iam disagree:\n  {}",
            report.join("\n  ")
        );
    }

    /// The retained table is unreadable in part without these: the audit key checks its
    /// chains' heads, the KMS key and the old TOTP key open its users' TOTP seeds. A stack
    /// deleted or a resource replaced must not take them with it.
    #[test]
    fn the_keys_the_retained_table_needs_are_retained_with_it() {
        let doc: Value = serde_yaml::from_str(TEMPLATE).expect("template");
        for id in ["Table", "AuditKeySecret", "TotpKeySecret", "TotpSeedKey"] {
            let r = &doc["Resources"][id];
            for policy in ["DeletionPolicy", "UpdateReplacePolicy"] {
                assert_eq!(r[policy].as_str(), Some("Retain"), "{id}: {policy}");
            }
        }
    }

    /// Each function logs to a group of its own that exists before it can run: named after
    /// the function, the group was made after it, and a run in between (the one-minute
    /// schedule) had Lambda make one with no retention; on delete it went first. The
    /// groups are kept, as the table is, and expire by their own retention.
    #[test]
    fn each_function_logs_to_its_own_retained_group_made_before_it() {
        let doc: Value = serde_yaml::from_str(TEMPLATE).expect("template");
        let mut groups = std::collections::HashSet::new();
        for f in Function::ALL {
            let props = function_props(&doc, f.logical_id()).expect("function");
            let group = match &props["LoggingConfig"]["LogGroup"] {
                Value::Tagged(t) if t.tag == "Ref" => {
                    t.value.as_str().unwrap_or_default().to_owned()
                }
                other => panic!("{}: LoggingConfig.LogGroup is {other:?}", f.logical_id()),
            };
            assert!(groups.insert(group.clone()), "{group} shared");
            let r = &doc["Resources"][group.as_str()];
            assert_eq!(r["Type"].as_str(), Some("AWS::Logs::LogGroup"), "{group}");
            let name = format!("{:?}", r["Properties"]["LogGroupName"]);
            assert!(
                !name.contains(f.logical_id()),
                "{group} is named after its function: {name}"
            );
            assert_eq!(
                r["Properties"]["RetentionInDays"].as_u64(),
                Some(731),
                "{group}"
            );
            for policy in ["DeletionPolicy", "UpdateReplacePolicy"] {
                assert_eq!(r[policy].as_str(), Some("Retain"), "{group}: {policy}");
            }
        }
    }

    /// The webhook's Function URL is public: its concurrency can be capped by a parameter
    /// (0: none), so a flood of forged requests cannot take the account's whole concurrency.
    #[test]
    fn the_public_webhook_s_concurrency_is_capped_by_a_parameter() {
        let doc: Value = serde_yaml::from_str(TEMPLATE).expect("template");
        let props = function_props(&doc, Function::Webhook.logical_id()).expect("webhook");
        assert_eq!(
            props["FunctionUrlConfig"]["AuthType"].as_str(),
            Some("NONE"),
            "the reason for the cap"
        );
        let reserved = format!("{:?}", props["ReservedConcurrentExecutions"]);
        assert!(
            reserved.contains("CapsWebhookConcurrency")
                && reserved.contains("WebhookReservedConcurrency"),
            "{reserved}"
        );
        assert_eq!(
            doc["Parameters"]["WebhookReservedConcurrency"]["Default"].as_u64(),
            Some(0)
        );
        assert!(!doc["Conditions"]["CapsWebhookConcurrency"].is_null());
    }

    #[test]
    fn every_function_deploys_the_one_binary_and_names_itself_in_kirim_function() {
        let doc: Value = serde_yaml::from_str(TEMPLATE).expect("template");
        for f in Function::ALL {
            let resource = &doc["Resources"][f.logical_id()];
            assert_eq!(
                resource["Metadata"]["BuildProperties"]["Binary"].as_str(),
                Some("kirim-lambda"),
                "{}",
                f.logical_id()
            );
            assert_eq!(
                resource["Properties"]["Environment"]["Variables"]["KIRIM_FUNCTION"].as_str(),
                Some(f.name()),
                "{}",
                f.logical_id()
            );
        }
    }

    /// Every KMS action that uses a key's material, or lets its holder give itself a use
    /// without the key policy changing (a grant).
    const KEY_USES: &[&str] = &[
        "kms:Decrypt",
        "kms:Encrypt",
        "kms:GenerateDataKey",
        "kms:GenerateDataKeyWithoutPlaintext",
        "kms:GenerateDataKeyPair",
        "kms:GenerateDataKeyPairWithoutPlaintext",
        "kms:ReEncryptFrom",
        "kms:ReEncryptTo",
        "kms:CreateGrant",
    ];

    /// Whether the policy action `a` (IAM's `*` and `?` wildcards, any case) covers `u`.
    fn action_covers(a: &str, u: &str) -> bool {
        fn matches(p: &[u8], s: &[u8]) -> bool {
            match (p.first(), s.first()) {
                (None, None) => true,
                (Some(b'*'), _) => matches(&p[1..], s) || (!s.is_empty() && matches(p, &s[1..])),
                (Some(b'?'), Some(_)) => matches(&p[1..], &s[1..]),
                (Some(x), Some(y)) => x == y && matches(&p[1..], &s[1..]),
                _ => false,
            }
        }
        matches(
            a.to_ascii_lowercase().as_bytes(),
            u.to_ascii_lowercase().as_bytes(),
        )
    }

    #[test]
    fn an_action_covers_a_use_by_name_or_wildcard_in_any_case() {
        assert!(action_covers("kms:Create*", "kms:CreateGrant"));
        assert!(action_covers("kms:*", "kms:Decrypt"));
        assert!(action_covers("KMS:decrypt", "kms:Decrypt"));
        assert!(action_covers("kms:ReEncrypt*", "kms:ReEncryptTo"));
        assert!(action_covers("kms:ReEncryptFrom", "kms:ReEncryptFrom"));
        assert!(action_covers("kms:Gen?rateDataKey", "kms:GenerateDataKey"));
        assert!(!action_covers("kms:CreateAlias", "kms:CreateGrant"));
        assert!(!action_covers("kms:Describe*", "kms:Decrypt"));
        assert!(!action_covers("kms:Decrypt", "kms:DecryptAll"));
    }

    #[test]
    fn no_key_policy_lets_anyone_but_the_named_roles_use_a_key() {
        // The account administers the key (and may change its policy, which CloudTrail
        // records) but no statement for it, or for anyone else, allows a use of the key.
        let doc: Value = serde_yaml::from_str(TEMPLATE).expect("template");
        let roles: Vec<String> = Function::ALL
            .iter()
            .map(|f| format!("{}Role", f.logical_id()))
            .collect();
        let keys = kms_keys(&doc);
        assert!(!keys.is_empty(), "the TOTP seed key is in the template");
        for (key, statements) in keys {
            for st in statements {
                if principals(&st).iter().all(|p| roles.contains(p)) {
                    continue;
                }
                assert!(
                    st.get("NotAction").is_none(),
                    "{key}: a NotAction statement allows uses: {st:?}"
                );
                for a in list(st.get("Action")) {
                    let a = a.as_str().unwrap_or_default();
                    let uses = KEY_USES.iter().any(|u| action_covers(a, u));
                    assert!(!uses, "{key}: {a} for {:?}", principals(&st));
                }
            }
        }
    }

    fn role_of(policies: &str, events: &str) -> Grants {
        let doc: Value = serde_yaml::from_str(&format!(
            "Resources:\n  DispatcherFunction:\n    Properties:\n      Policies:\n{policies}\n      Events:\n{events}\n"
        ))
        .expect("yaml");
        let (g, problems) = granted(&doc, Function::Dispatcher);
        assert!(problems.is_empty(), "{problems:?}");
        g
    }

    #[test]
    fn the_check_sees_what_a_sam_policy_template_grants_beyond_the_code() {
        let g = role_of(
            "        - DynamoDBCrudPolicy:\n            TableName: !Ref Table",
            "        {}",
        );
        assert!(g["Table"].contains("dynamodb:Scan"));
        assert!(g["${Table.Arn}/index/*"].contains("dynamodb:DescribeTable"));
        let lines = diff(Function::Dispatcher, &g, &needed(Function::Dispatcher));
        assert!(
            lines
                .iter()
                .any(|l| l.contains("grants dynamodb:Scan on Table")),
            "{lines:?}"
        );
    }

    #[test]
    fn an_sqs_event_grants_polling_everywhere_until_a_deny_narrows_it() {
        let event = "        Dispatch:\n          Type: SQS\n          Properties:\n            Queue: !GetAtt DispatchQueue.Arn";
        let open = role_of("        []", event);
        assert!(open["*"].contains("sqs:ReceiveMessage"));
        assert!(open["DispatchDeadLetterQueue"].contains("sqs:DeleteMessage"));
        let narrowed = role_of(
            "        - Statement:\n            - Effect: Deny\n              Action: [sqs:ReceiveMessage, sqs:DeleteMessage, sqs:GetQueueAttributes]\n              NotResource: !GetAtt DispatchQueue.Arn",
            event,
        );
        assert!(!narrowed.contains_key("*"), "{narrowed:?}");
        assert!(!narrowed.contains_key("DispatchDeadLetterQueue"));
        assert_eq!(narrowed["DispatchQueue"].len(), 3);
    }

    #[test]
    fn an_unmodelled_policy_is_reported_not_ignored() {
        let doc: Value = serde_yaml::from_str(
            "Resources:\n  DispatcherFunction:\n    Properties:\n      Policies:\n        - AmazonSQSFullAccess\n        - S3CrudPolicy:\n            BucketName: b\n",
        )
        .expect("yaml");
        let (_, problems) = granted(&doc, Function::Dispatcher);
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn a_not_action_statement_or_a_role_of_its_own_is_reported_not_read_as_no_grant() {
        let doc: Value = serde_yaml::from_str(
            "Resources:\n  DispatcherFunction:\n    Properties:\n      Policies:\n        - Statement:\n            - Effect: Allow\n              NotAction: iam:*\n              Resource: '*'\n",
        )
        .expect("yaml");
        let (g, problems) = granted(&doc, Function::Dispatcher);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("NotAction"), "{problems:?}");
        assert!(g.is_empty(), "{g:?}");
        let doc: Value = serde_yaml::from_str(
            "Resources:\n  DispatcherFunction:\n    Properties:\n      Role: arn:aws:iam::1:role/admin\n      Policies: []\n",
        )
        .expect("yaml");
        let (_, problems) = granted(&doc, Function::Dispatcher);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("Role"), "{problems:?}");
    }
}
