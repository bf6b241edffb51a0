//! Creates the stack's DynamoDB table, SQS queues, secrets and KMS keys in an emulator
//! (moto) when they are missing — read from `template.yaml` itself, so local mode and tests run on
//! exactly the definitions that are deployed.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TimeToLiveSpecification,
};
use aws_sdk_sqs::types::QueueAttributeName;
use serde_yaml::Value;

const TEMPLATE: &str = include_str!("../../template.yaml");

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("template.yaml: {0}")]
    Template(String),
    #[error("emulator: {0}")]
    Aws(String),
}

fn aws<E: std::fmt::Debug>(what: &str) -> impl Fn(E) -> BootstrapError + '_ {
    move |e| BootstrapError::Aws(format!("{what}: {e:?}"))
}

fn tmpl(msg: &str) -> BootstrapError {
    BootstrapError::Template(msg.to_owned())
}

#[derive(Clone, Debug)]
pub struct Queue {
    pub url: String,
    pub arn: String,
}

/// What exists in the emulator after `ensure_stack`.
#[derive(Clone, Debug)]
pub struct Stack {
    pub table: String,
    /// By logical id (`DispatchQueue`, `DispatchDeadLetterQueue`, ...).
    pub queues: HashMap<String, Queue>,
    /// Secret names by logical id (`OperatorTokenSecret`, ...).
    pub secrets: HashMap<String, String>,
    /// KMS key ARNs by logical id (`TotpSeedKey`), found again by their alias.
    pub kms_keys: HashMap<String, String>,
}

impl Stack {
    pub fn queue_url(&self, logical: &str) -> Option<String> {
        self.queues.get(logical).map(|q| q.url.clone())
    }
}

/// The resources of one CloudFormation type, by logical id.
fn resources(doc: &Value, kind: &str) -> Vec<(String, Value)> {
    doc.get("Resources")
        .and_then(Value::as_mapping)
        .map(|m| {
            m.iter()
                .filter(|(_, r)| r.get("Type").and_then(Value::as_str) == Some(kind))
                .filter_map(|(k, r)| Some((k.as_str()?.to_owned(), r.get("Properties")?.clone())))
                .collect()
        })
        .unwrap_or_default()
}

fn text(v: &Value, key: &str) -> Result<String, BootstrapError> {
    match v.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(Value::Bool(b)) => Ok(b.to_string()),
        _ => Err(tmpl(&format!("missing {key}"))),
    }
}

fn key_schema(v: &Value) -> Result<Vec<KeySchemaElement>, BootstrapError> {
    v.as_sequence()
        .ok_or_else(|| tmpl("KeySchema"))?
        .iter()
        .map(|k| {
            KeySchemaElement::builder()
                .attribute_name(text(k, "AttributeName")?)
                .key_type(KeyType::from(text(k, "KeyType")?.as_str()))
                .build()
                .map_err(aws("key schema"))
        })
        .collect()
}

/// Resolves `!Sub "${AWS::StackName}/..."` for a secret's name.
fn secret_name(props: &Value, stack: &str, logical: &str) -> String {
    let raw = match props.get("Name") {
        Some(Value::Tagged(t)) => t.value.as_str().map(str::to_owned),
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    raw.map(|s| s.replace("${AWS::StackName}", stack))
        .unwrap_or_else(|| format!("{stack}/{logical}"))
}

pub async fn ensure_stack(
    sdk: &aws_config::SdkConfig,
    stack: &str,
) -> Result<Stack, BootstrapError> {
    let doc: Value = serde_yaml::from_str(TEMPLATE).map_err(|e| tmpl(&e.to_string()))?;
    let ddb = aws_sdk_dynamodb::Client::new(sdk);
    let sqs = aws_sdk_sqs::Client::new(sdk);

    // The table.
    let tables = resources(&doc, "AWS::DynamoDB::Table");
    let (logical, props) = tables.first().ok_or_else(|| tmpl("no table"))?;
    let table = format!("{stack}-{logical}");
    // DescribeTable, not ListTables: a listing is paged (100 names), so a busy emulator
    // would hide an existing table and the create would fail.
    let exists = match ddb.describe_table().table_name(&table).send().await {
        Ok(_) => true,
        Err(e)
            if e.as_service_error()
                .is_some_and(|se| se.is_resource_not_found_exception()) =>
        {
            false
        }
        Err(e) => return Err(aws("describe table")(e)),
    };
    if !exists {
        let attrs = props
            .get("AttributeDefinitions")
            .and_then(Value::as_sequence)
            .ok_or_else(|| tmpl("AttributeDefinitions"))?
            .iter()
            .map(|a| {
                AttributeDefinition::builder()
                    .attribute_name(text(a, "AttributeName")?)
                    .attribute_type(ScalarAttributeType::from(
                        text(a, "AttributeType")?.as_str(),
                    ))
                    .build()
                    .map_err(aws("attribute"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut req = ddb
            .create_table()
            .table_name(&table)
            .billing_mode(BillingMode::PayPerRequest)
            .set_attribute_definitions(Some(attrs))
            .set_key_schema(Some(key_schema(
                props.get("KeySchema").ok_or_else(|| tmpl("KeySchema"))?,
            )?));
        for g in props
            .get("GlobalSecondaryIndexes")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let gsi = GlobalSecondaryIndex::builder()
                .index_name(text(g, "IndexName")?)
                .set_key_schema(Some(key_schema(
                    g.get("KeySchema").ok_or_else(|| tmpl("GSI KeySchema"))?,
                )?))
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::All)
                        .build(),
                )
                .build()
                .map_err(aws("gsi"))?;
            req = req.global_secondary_indexes(gsi);
        }
        req.send().await.map_err(aws("create table"))?;
        if let Some(ttl) = props.get("TimeToLiveSpecification") {
            ddb.update_time_to_live()
                .table_name(&table)
                .time_to_live_specification(
                    TimeToLiveSpecification::builder()
                        .attribute_name(text(ttl, "AttributeName")?)
                        .enabled(true)
                        .build()
                        .map_err(aws("ttl"))?,
                )
                .send()
                .await
                .map_err(aws("update ttl"))?;
        }
    }

    // Queues: create all, then apply attributes (a redrive policy names another queue).
    let mut queues = HashMap::new();
    let defs = resources(&doc, "AWS::SQS::Queue");
    for (logical, _) in &defs {
        let name = format!("{stack}-{logical}");
        let url = sqs
            .create_queue()
            .queue_name(&name)
            .send()
            .await
            .map_err(aws("create queue"))?
            .queue_url
            .ok_or_else(|| BootstrapError::Aws("no queue url".into()))?;
        let attrs = sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(aws("queue attributes"))?;
        let arn = attrs
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .cloned()
            .unwrap_or_default();
        queues.insert(logical.clone(), Queue { url, arn });
    }
    for (logical, props) in &defs {
        let Some(q) = queues.get(logical) else {
            continue;
        };
        let mut req = sqs.set_queue_attributes().queue_url(&q.url);
        for key in [
            "VisibilityTimeout",
            "MessageRetentionPeriod",
            "MaximumMessageSize",
        ] {
            if let Ok(v) = text(props, key) {
                req = req.attributes(QueueAttributeName::from(key), v);
            }
        }
        if let Some(rp) = props.get("RedrivePolicy") {
            let target = match rp.get("deadLetterTargetArn") {
                Some(Value::Tagged(t)) => t
                    .value
                    .as_str()
                    .and_then(|s| s.strip_suffix(".Arn"))
                    .and_then(|l| queues.get(l))
                    .map(|q| q.arn.clone()),
                _ => None,
            }
            .ok_or_else(|| tmpl("RedrivePolicy target"))?;
            let policy = serde_json::json!({
                "deadLetterTargetArn": target,
                "maxReceiveCount": text(rp, "maxReceiveCount")?,
            });
            req = req.attributes(QueueAttributeName::RedrivePolicy, policy.to_string());
        }
        req.send().await.map_err(aws("set queue attributes"))?;
    }

    let secrets = resources(&doc, "AWS::SecretsManager::Secret")
        .into_iter()
        .map(|(logical, props)| {
            let name = secret_name(&props, stack, &logical);
            (logical, name)
        })
        .collect();
    let kms_keys = ensure_kms_keys(sdk, &doc, stack).await?;
    Ok(Stack {
        table,
        queues,
        secrets,
        kms_keys,
    })
}

/// Each aliased KMS key of the template: found by its alias (so a restart on a persistent
/// emulator keeps the key that wrapped what is stored), else created with the template's
/// key spec and rotation, and aliased. By the key's logical id.
async fn ensure_kms_keys(
    sdk: &aws_config::SdkConfig,
    doc: &Value,
    stack: &str,
) -> Result<HashMap<String, String>, BootstrapError> {
    let kms = aws_sdk_kms::Client::new(sdk);
    let keys: HashMap<String, Value> = resources(doc, "AWS::KMS::Key").into_iter().collect();
    let mut out = HashMap::new();
    for (logical, props) in resources(doc, "AWS::KMS::Alias") {
        let alias = match props.get("AliasName") {
            Some(Value::Tagged(t)) => t
                .value
                .as_str()
                .map(|s| s.replace("${AWS::StackName}", stack)),
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        }
        .ok_or_else(|| tmpl(&format!("{logical}: AliasName")))?;
        let target = match props.get("TargetKeyId") {
            Some(Value::Tagged(t)) => t.value.as_str().map(str::to_owned),
            _ => None,
        }
        .ok_or_else(|| tmpl("TargetKeyId"))?;
        let key_props = keys.get(&target).ok_or_else(|| tmpl("alias target"))?;
        let existing = match kms.describe_key().key_id(&alias).send().await {
            Ok(out) => out
                .key_metadata()
                .map(|m| m.arn().unwrap_or_default().to_owned()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_not_found_exception()) =>
            {
                None
            }
            Err(e) => return Err(aws("describe key")(e)),
        };
        let arn = match existing {
            Some(arn) => arn,
            None => {
                let mut req = kms.create_key();
                if let Ok(spec) = text(key_props, "KeySpec") {
                    req = req.key_spec(aws_sdk_kms::types::KeySpec::from(spec.as_str()));
                }
                if let Ok(usage) = text(key_props, "KeyUsage") {
                    req = req.key_usage(aws_sdk_kms::types::KeyUsageType::from(usage.as_str()));
                }
                let meta = req
                    .send()
                    .await
                    .map_err(aws("create key"))?
                    .key_metadata
                    .ok_or_else(|| BootstrapError::Aws("no key metadata".into()))?;
                if text(key_props, "EnableKeyRotation").is_ok_and(|v| v == "true") {
                    kms.enable_key_rotation()
                        .key_id(meta.key_id())
                        .send()
                        .await
                        .map_err(aws("enable key rotation"))?;
                }
                kms.create_alias()
                    .alias_name(&alias)
                    .target_key_id(meta.key_id())
                    .send()
                    .await
                    .map_err(aws("create alias"))?;
                meta.arn().unwrap_or_default().to_owned()
            }
        };
        out.insert(target, arn);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_declares_the_table_queues_and_secrets_local_mode_needs() {
        let doc: Value = serde_yaml::from_str(TEMPLATE).unwrap();
        assert_eq!(resources(&doc, "AWS::DynamoDB::Table").len(), 1);
        let queues: Vec<String> = resources(&doc, "AWS::SQS::Queue")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert!(queues.contains(&"DispatchQueue".to_owned()));
        assert!(queues.contains(&"DispatchDeadLetterQueue".to_owned()));
        let secrets = resources(&doc, "AWS::SecretsManager::Secret");
        let names: Vec<String> = secrets
            .iter()
            .map(|(l, p)| secret_name(p, "st", l))
            .collect();
        assert!(names.contains(&"st/operator-token".to_owned()));
    }

    /// Each queue and its dead-letter queue are kept as `kirim::domain`'s shapes say, which
    /// local mode's memory queues follow: the visibility, the receives before the
    /// dead-letter queue, and both retentions (a job's content lives no longer locally).
    #[test]
    fn the_templates_queues_keep_messages_as_the_code_says() {
        use kirim::domain::{QueueShape, DISPATCH_QUEUE, STATUS_CALLBACK_QUEUE};
        let doc: Value = serde_yaml::from_str(TEMPLATE).unwrap();
        let queues = resources(&doc, "AWS::SQS::Queue");
        let props = |name: &str| {
            queues
                .iter()
                .find(|(l, _)| l == name)
                .map(|(_, p)| p.clone())
                .unwrap_or_else(|| panic!("{name} declared"))
        };
        let secs = |p: &Value, key: &str| -> u64 {
            text(p, key)
                .unwrap_or_else(|_| panic!("{key} declared"))
                .parse()
                .unwrap_or_else(|_| panic!("{key} a number"))
        };
        let shapes: [(&str, &str, QueueShape); 2] = [
            ("DispatchQueue", "DispatchDeadLetterQueue", DISPATCH_QUEUE),
            (
                "StatusCallbackQueue",
                "StatusCallbackDeadLetterQueue",
                STATUS_CALLBACK_QUEUE,
            ),
        ];
        for (name, dlq, shape) in shapes {
            let q = props(name);
            let redrive = q.get("RedrivePolicy").expect("a redrive policy");
            let target = format!("{:?}", redrive.get("deadLetterTargetArn"));
            assert!(target.contains(&format!("{dlq}.Arn")), "{name}: {target}");
            let declared = QueueShape {
                visibility: std::time::Duration::from_secs(secs(&q, "VisibilityTimeout")),
                max_receives: secs(redrive, "maxReceiveCount") as u32,
                retention: std::time::Duration::from_secs(secs(&q, "MessageRetentionPeriod")),
                dead_letter_retention: std::time::Duration::from_secs(secs(
                    &props(dlq),
                    "MessageRetentionPeriod",
                )),
            };
            assert_eq!(declared, shape, "{name}");
        }
    }

    /// A send's job carries its request's content (up to the API's 256 KiB body) and an
    /// envelope: the dispatch queue and its dead-letter queue take SQS's largest message
    /// (a queue made before August 2025 keeps the old 256 KiB until the template says so),
    /// or a request just under the body limit would be refused for good at the enqueue.
    #[test]
    fn the_dispatch_queues_take_a_job_larger_than_the_apis_largest_body() {
        let doc: Value = serde_yaml::from_str(TEMPLATE).unwrap();
        let queues = resources(&doc, "AWS::SQS::Queue");
        for name in ["DispatchQueue", "DispatchDeadLetterQueue"] {
            let (_, props) = queues
                .iter()
                .find(|(l, _)| l == name)
                .unwrap_or_else(|| panic!("{name} declared"));
            let size: usize = text(props, "MaximumMessageSize")
                .unwrap_or_else(|_| panic!("{name} declares MaximumMessageSize"))
                .parse()
                .unwrap();
            assert!(
                size >= kirim::http::extract::MAX_BODY + 64 * 1024,
                "{name}: {size} B leaves no room for a job's envelope"
            );
        }
    }

    /// Each dead-letter queue has an alarm on any letter and one on a new letter (a rise of
    /// its count: CloudWatch notifies on a state change only, and a letter left to expire
    /// keeps the first in `ALARM`).
    #[test]
    fn each_dead_letter_queue_alarms_on_any_letter_and_on_each_new_one() {
        let doc: Value = serde_yaml::from_str(TEMPLATE).unwrap();
        let alarms = resources(&doc, "AWS::CloudWatch::Alarm");
        for queue in ["DispatchDeadLetterQueue", "StatusCallbackDeadLetterQueue"] {
            let watching = |a: &Value| format!("{a:?}").contains(queue);
            let any = alarms.iter().any(|(_, p)| {
                watching(p) && p.get("Threshold").is_some() && p.get("Metrics").is_none()
            });
            let rise = alarms.iter().any(|(_, p)| {
                watching(p)
                    && p.get("Metrics")
                        .and_then(Value::as_sequence)
                        .is_some_and(|m| {
                            m.iter().any(|x| {
                                x.get("Expression").and_then(Value::as_str) == Some("DIFF(visible)")
                            })
                        })
                    && p.get("AlarmActions").is_some()
            });
            assert!(any && rise, "{queue}: any {any}, rise {rise}");
        }
    }

    /// The `Where`/`Problem` values one metric-math alarm sums, asserting its shape: every
    /// metric is `Kirim/{metric}`'s `Sum` under the one dimension `dimension`, and the one
    /// expression returned sums each as `FILL(id, 0)`; it notifies the alarm topic.
    fn summed_dimension_values(alarm_name: &str, metric: &str, dimension: &str) -> Vec<String> {
        let doc: Value = serde_yaml::from_str(TEMPLATE).unwrap();
        let alarm = resources(&doc, "AWS::CloudWatch::Alarm")
            .into_iter()
            .find(|(k, _)| k == alarm_name)
            .map(|(_, p)| p)
            .unwrap_or_else(|| panic!("{alarm_name}"));
        let metrics = alarm.get("Metrics").and_then(Value::as_sequence).unwrap();
        let mut watched: Vec<String> = Vec::new();
        let mut ids: Vec<String> = Vec::new();
        for m in metrics {
            let Some(stat) = m.get("MetricStat") else {
                continue;
            };
            let m_metric = stat.get("Metric").unwrap();
            assert_eq!(
                m_metric.get("Namespace").and_then(Value::as_str),
                Some("Kirim")
            );
            assert_eq!(
                m_metric.get("MetricName").and_then(Value::as_str),
                Some(metric)
            );
            assert_eq!(stat.get("Stat").and_then(Value::as_str), Some("Sum"));
            let dims = m_metric
                .get("Dimensions")
                .and_then(Value::as_sequence)
                .unwrap();
            assert_eq!(dims.len(), 1);
            assert_eq!(dims[0].get("Name").and_then(Value::as_str), Some(dimension));
            watched.push(
                dims[0]
                    .get("Value")
                    .and_then(Value::as_str)
                    .unwrap()
                    .to_owned(),
            );
            ids.push(m.get("Id").and_then(Value::as_str).unwrap().to_owned());
        }
        // The one expression returned sums every metric above.
        let returned: Vec<&Value> = metrics
            .iter()
            .filter(|m| m.get("ReturnData").and_then(Value::as_bool) == Some(true))
            .collect();
        assert_eq!(returned.len(), 1);
        let expression = returned[0]
            .get("Expression")
            .and_then(Value::as_str)
            .unwrap();
        for id in &ids {
            assert!(
                expression.contains(&format!("FILL({id}, 0)")),
                "{id}: {expression}"
            );
        }
        let actions = format!("{:?}", alarm.get("AlarmActions"));
        assert!(actions.contains("AlarmTopic"), "{alarm_name}: {actions}");
        watched.sort();
        watched
    }

    /// Every way an audit intent fails its work is in one alarm's sum, and nothing else is.
    #[test]
    fn every_audit_intent_problem_the_code_counts_is_alarmed() {
        let watched =
            summed_dimension_values("AuditIntentProblemsAlarm", "AuditIntentProblems", "Problem");
        let mut known: Vec<String> = kirim::metrics::AUDIT_INTENT_PROBLEMS
            .iter()
            .map(|p| p.to_string())
            .collect();
        known.sort();
        assert_eq!(watched, known);
        // And each problem the code counts is one of those (the sweep's own and the
        // middleware's call sites name them as literals).
        let sources = [
            include_str!("../../shared/src/service/audit.rs"),
            include_str!("../../shared/src/http/access.rs"),
        ]
        .concat();
        for problem in kirim::metrics::AUDIT_INTENT_PROBLEMS {
            assert!(sources.contains(&format!("\"{problem}\"")), "{problem}");
        }
    }

    /// A TOTP seed that does not open, at a sign-in or a 2FA confirmation, raises one alarm;
    /// and each place is counted under its own `Where` (a sign-in's once counted as a
    /// confirmation's).
    #[test]
    fn every_place_a_totp_seed_goes_unopened_is_counted_under_its_name_and_alarmed() {
        let watched =
            summed_dimension_values("TotpSeedsUnopenedAlarm", "TotpSeedsUnopened", "Where");
        let mut known: Vec<String> = kirim::metrics::TOTP_SEEDS_UNOPENED_WHERE
            .iter()
            .map(|p| p.to_string())
            .collect();
        known.sort();
        assert_eq!(watched, known);
        // The service's call sites name them as literals: the sign-in's in `attempt`, the
        // confirmation's in `confirm`, one each.
        let users = include_str!("../../shared/src/service/users.rs");
        let body = |signature: &str| {
            let start = users
                .find(signature)
                .unwrap_or_else(|| panic!("{signature}"));
            let len = users[start..].find("\n}\n").expect("its end");
            &users[start..start + len]
        };
        for (signature, place) in [
            ("\nasync fn attempt(", "login"),
            ("\npub async fn confirm(", "confirm"),
        ] {
            let call = format!("metrics::totp_seed_unopened(\"{place}\")");
            assert_eq!(users.matches(&call).count(), 1, "{call}");
            assert!(body(signature).contains(&call), "{call} in {signature}");
        }
    }

    /// A late `delivered` or `sent` whose time was dropped raises one alarm, past a few an
    /// hour; each status the code counts (`metrics::LATE_STATUSES_DROPPED`) is in its sum,
    /// and nothing else is.
    #[test]
    fn every_late_status_whose_time_is_dropped_is_alarmed_past_a_few_an_hour() {
        let watched =
            summed_dimension_values("LateStatusesDroppedAlarm", "LateStatusesDropped", "Status");
        let mut known: Vec<String> = kirim::metrics::LATE_STATUSES_DROPPED
            .iter()
            .map(|p| p.to_string())
            .collect();
        known.sort();
        assert_eq!(watched, known);
        // More than 5 in an hour, each status's sum over that hour: not any (a race of one
        // message's statuses now and then is no fault).
        let doc: Value = serde_yaml::from_str(TEMPLATE).unwrap();
        let (_, alarm) = resources(&doc, "AWS::CloudWatch::Alarm")
            .into_iter()
            .find(|(k, _)| k == "LateStatusesDroppedAlarm")
            .unwrap();
        assert_eq!(alarm.get("Threshold").and_then(Value::as_f64), Some(5.0));
        assert_eq!(
            alarm.get("ComparisonOperator").and_then(Value::as_str),
            Some("GreaterThanThreshold")
        );
        for m in alarm.get("Metrics").and_then(Value::as_sequence).unwrap() {
            if let Some(stat) = m.get("MetricStat") {
                assert_eq!(stat.get("Period").and_then(Value::as_u64), Some(3600));
            }
        }
        // The one call site counts the status the late time was for.
        let status = include_str!("../../shared/src/service/status.rs");
        assert_eq!(
            status
                .matches("metrics::late_status_dropped(to.as_str())")
                .count(),
            1
        );
    }

    /// Each log line the README tells operators to alarm on is counted from every function's
    /// log group, and alarmed on; so is a lost status callback.
    #[test]
    fn the_audit_trails_alarm_lines_and_lost_callbacks_have_alarms() {
        let doc: Value = serde_yaml::from_str(TEMPLATE).unwrap();
        let log_groups: Vec<String> = resources(&doc, "AWS::Logs::LogGroup")
            .into_iter()
            .filter(|(_, p)| {
                untagged(p.get("LogGroupName").unwrap())
                    .as_str()
                    .is_some_and(|n| n.starts_with("/aws/lambda/"))
            })
            .map(|(k, _)| k)
            .collect();
        assert_eq!(log_groups.len(), 7, "{log_groups:?}");
        let filters = resources(&doc, "AWS::Logs::MetricFilter");
        for group in &log_groups {
            // The phrases `service::audit` logs at error level, in one filter of the group.
            let audited = filters
                .iter()
                .filter(|(_, p)| untagged(p.get("LogGroupName").unwrap()).as_str() == Some(group))
                .filter_map(|(_, p)| p.get("FilterPattern").and_then(Value::as_str))
                .any(|pattern| {
                    [
                        "AUDIT EVENT LOST",
                        "DOES NOT VERIFY",
                        "AUDIT CHAIN HAS EVENTS BUT NO HEAD",
                    ]
                    .iter()
                    .all(|phrase| pattern.contains(phrase))
                });
            assert!(audited, "no audit-integrity metric filter on {group}");
        }
        let alarmed: Vec<String> = resources(&doc, "AWS::CloudWatch::Alarm")
            .into_iter()
            .filter_map(|(_, p)| Some(p.get("MetricName")?.as_str()?.to_owned()))
            .collect();
        for metric in [
            "AuditIntegrity",
            "CallbacksLost",
            "WebhookNotApplied",
            "WebhookBadSignature",
        ] {
            assert!(alarmed.iter().any(|m| m == metric), "{metric}: {alarmed:?}");
        }
        // The audit trail's phrases, as `service::audit` logs them.
        let audit = include_str!("../../shared/src/service/audit.rs");
        for phrase in [
            "AUDIT EVENT LOST",
            "DOES NOT VERIFY",
            "AUDIT CHAIN HAS EVENTS BUT NO HEAD",
        ] {
            assert!(audit.contains(phrase), "{phrase}");
        }
        // The webhook's phrase for a body answered 500, which its filter counts.
        assert!(include_str!("../../shared/src/http/mod.rs").contains("webhook items not applied"));
        let webhook_filter = filters
            .iter()
            .find(|(k, _)| k == "WebhookNotAppliedFilter")
            .and_then(|(_, p)| p.get("FilterPattern").and_then(Value::as_str));
        assert_eq!(webhook_filter, Some("\"webhook items not applied\""));
        // And its phrase for a body signed with another secret than the app's.
        assert!(include_str!("../../shared/src/http/mod.rs")
            .contains("\"webhook signature does not match the Meta app secret\""));
        let bad_signature_filter = filters
            .iter()
            .find(|(k, _)| k == "WebhookBadSignatureFilter")
            .and_then(|(_, p)| p.get("FilterPattern").and_then(Value::as_str));
        assert_eq!(
            bad_signature_filter,
            Some("\"webhook signature does not match the Meta app secret\"")
        );
        // Every function's whole-invocation failures are alarmed (an init failure fails
        // every request it would have served).
        let errors: Vec<String> = resources(&doc, "AWS::CloudWatch::Alarm")
            .into_iter()
            .filter(|(_, p)| p.get("MetricName").and_then(Value::as_str) == Some("Errors"))
            .filter_map(|(_, p)| {
                let d = p.get("Dimensions")?.as_sequence()?.first()?.get("Value")?;
                Some(format!("{d:?}"))
            })
            .collect();
        for f in [
            "SendApiFunction",
            "AdminApiFunction",
            "WebhookFunction",
            "DispatcherFunction",
            "StatusCallbackFunction",
            "RetentionFunction",
            "ConsoleFunction",
        ] {
            assert!(errors.iter().any(|e| e.contains(f)), "{f}: {errors:?}");
        }
        let code = include_str!("../../shared/src/service/audit.rs");
        for phrase in ["AUDIT EVENT LOST", "DOES NOT VERIFY"] {
            assert!(code.contains(phrase), "the code still logs {phrase}");
        }
    }

    /// The HTTP API's stage-wide route throttle is above one tenant's default allowance
    /// (else one tenant's burst gets API Gateway's bare 429 for every tenant), and both
    /// queue-driven functions take the reserved concurrency parameter.
    #[test]
    fn the_stage_throttle_admits_a_tenants_allowance_and_queue_functions_can_reserve() {
        let doc: Value = serde_yaml::from_str(TEMPLATE).unwrap();
        let params = doc.get("Parameters").unwrap();
        let default = |name: &str| {
            params
                .get(name)
                .and_then(|p| p.get("Default"))
                .and_then(Value::as_u64)
                .unwrap()
        };
        let per_key = u64::from(kirim::domain::RequestLimits::DEFAULT.requests_per_sec);
        assert!(
            default("ApiThrottleRate") >= per_key * 4,
            "a tenant's allowance"
        );
        assert!(default("ApiThrottleBurst") >= default("ApiThrottleRate"));
        let functions = resources(&doc, "AWS::Serverless::Function");
        for name in ["DispatcherFunction", "StatusCallbackFunction"] {
            let f = &functions.iter().find(|(k, _)| k == name).unwrap().1;
            let reserved = format!("{:?}", f.get("ReservedConcurrentExecutions").unwrap());
            assert!(
                reserved.contains("QueueReservedConcurrency"),
                "{name}: {reserved}"
            );
        }
    }

    /// A tagged value's inner value (`!Sub "…"` → "…", `!Ref X` → "X").
    fn untagged(v: &Value) -> &Value {
        match v {
            Value::Tagged(t) => &t.value,
            other => other,
        }
    }

    #[test]
    fn a_provisioned_table_gives_the_table_and_each_index_capacity_and_auto_scaling() {
        let doc: Value = serde_yaml::from_str(TEMPLATE).unwrap();
        let all = doc.get("Resources").and_then(Value::as_mapping).unwrap();
        let (table_id, table) = resources(&doc, "AWS::DynamoDB::Table").remove(0);
        assert!(
            table.get("ProvisionedThroughput").is_some(),
            "the table's capacity when provisioned"
        );
        let mut wanted: Vec<(String, String)> = ["Read", "Write"]
            .iter()
            .map(|d| {
                (
                    format!("table/${{{table_id}}}"),
                    format!("dynamodb:table:{d}CapacityUnits"),
                )
            })
            .collect();
        for gsi in table
            .get("GlobalSecondaryIndexes")
            .and_then(Value::as_sequence)
            .unwrap()
        {
            let name = text(gsi, "IndexName").unwrap();
            assert!(
                gsi.get("ProvisionedThroughput").is_some(),
                "index {name} has its capacity when provisioned"
            );
            for d in ["Read", "Write"] {
                wanted.push((
                    format!("table/${{{table_id}}}/index/{name}"),
                    format!("dynamodb:index:{d}CapacityUnits"),
                ));
            }
        }
        for (resource, dimension) in wanted {
            let target = resources(&doc, "AWS::ApplicationAutoScaling::ScalableTarget")
                .into_iter()
                .find(|(_, p)| {
                    p.get("ResourceId").map(untagged).and_then(Value::as_str)
                        == Some(resource.as_str())
                        && p.get("ScalableDimension").and_then(Value::as_str)
                            == Some(dimension.as_str())
                })
                .map(|(id, _)| id)
                .unwrap_or_else(|| panic!("no scalable target for {resource} {dimension}"));
            let conditioned = |id: &str| {
                all.get(id)
                    .and_then(|r| r.get("Condition"))
                    .and_then(Value::as_str)
                    == Some("ProvisionedTable")
            };
            assert!(conditioned(&target), "{target} only when provisioned");
            let policy = resources(&doc, "AWS::ApplicationAutoScaling::ScalingPolicy")
                .into_iter()
                .find(|(_, p)| {
                    p.get("ScalingTargetId")
                        .map(untagged)
                        .and_then(Value::as_str)
                        == Some(target.as_str())
                })
                .unwrap_or_else(|| panic!("no scaling policy for {target}"));
            assert!(conditioned(&policy.0));
            assert_eq!(
                policy.1.get("PolicyType").and_then(Value::as_str),
                Some("TargetTrackingScaling")
            );
        }
    }

    /// The variable names a function's environment sets: the globals and its own.
    fn env_of(doc: &Value, props: &Value) -> Vec<String> {
        let keys = |v: Option<&Value>| -> Vec<String> {
            v.and_then(|e| e.get("Variables"))
                .and_then(Value::as_mapping)
                .map(|m| {
                    m.keys()
                        .filter_map(|k| k.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let globals = doc
            .get("Globals")
            .and_then(|g| g.get("Function"))
            .and_then(|f| f.get("Environment"));
        let mut vars = keys(globals);
        vars.extend(keys(props.get("Environment")));
        vars
    }

    #[test]
    fn each_function_gets_exactly_the_queue_environment_its_wiring_and_grants_declare() {
        use kirim::wiring::{Function, Port};
        let doc: Value = serde_yaml::from_str(TEMPLATE).unwrap();
        let functions = resources(&doc, "AWS::Serverless::Function");
        let mut declared: Vec<&str> = Function::ALL.iter().map(|f| f.logical_id()).collect();
        let mut in_template: Vec<&str> = functions.iter().map(|(l, _)| l.as_str()).collect();
        declared.sort();
        in_template.sort();
        assert_eq!(declared, in_template, "every function declares its wiring");
        for function in Function::ALL {
            let props = &functions
                .iter()
                .find(|(l, _)| l == function.logical_id())
                .expect("declared")
                .1;
            let vars = env_of(&doc, props);
            for required in function.required_env() {
                assert!(
                    vars.iter().any(|v| v == required),
                    "{} lacks {required}",
                    function.logical_id()
                );
            }
            // The TOTP seed key goes only where the key policy lets the role use it.
            assert_eq!(
                vars.iter().any(|v| v == kirim::wiring::TOTP_KMS_KEY_ENV),
                function.uses_port(Port::DataKeys),
                "{}: {}",
                function.logical_id(),
                kirim::wiring::TOTP_KMS_KEY_ENV
            );
            for port in [Port::DispatchQueue, Port::CallbackQueue] {
                let (url, dlq) = port.env().expect("a queue");
                if !function.uses_port(port) {
                    assert!(
                        !vars.iter().any(|v| v == url || v == dlq),
                        "{} is given the {port} but does not use it",
                        function.logical_id()
                    );
                }
                // A dead-letter queue's URL goes where its grants do (kirim::iam).
                assert_eq!(
                    vars.iter().any(|v| v == dlq),
                    function.uses_dead_letters(port),
                    "{}: {dlq}",
                    function.logical_id()
                );
            }
        }
    }
}
