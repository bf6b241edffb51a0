//! Validation of `POST /{version}/{phone_number_id}/messages` request bodies against Meta's own
//! OpenAPI description of the WhatsApp Cloud API (`infra/meta/business-messaging-api_v23.0.yaml`,
//! MIT, Meta Platforms; the licence sits next to it).
//!
//! The spec is OpenAPI 3.1, whose schemas are JSON Schema 2020-12 plus two things a plain
//! validator does not do the way OpenAPI tools read them:
//!
//! * message schemas are written as `allOf: [BaseMessageProperties, {additionalProperties: false,
//!   properties: {type, text}}]`. Under JSON Schema the second branch alone would reject
//!   `messaging_product`, `to`, … So every `allOf` with such a closed inline branch is rewritten:
//!   the branch loses `additionalProperties: false` and the `allOf` parent gets
//!   `unevaluatedProperties: false`, which sees the properties of every branch. The eleven message
//!   schemas that `Message` maps are closed that way even when the spec left them open
//!   (`TemplateMessage` is), so an unknown top-level field always fails, as it does at Meta.
//! * `Message` is a `oneOf` with a `discriminator` on `type`. The discriminator's mapping picks the
//!   one schema to validate against (much clearer errors than a failed `oneOf`); a missing or
//!   unknown `type` is an error.
//!
//! A few places where the spec contradicts what the Cloud API accepts (and its own examples) are
//! patched before compiling; see [`ERRATA`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use jsonschema::error::ValidationErrorKind;
use serde_json::{Map, Value};

/// The spec, embedded at build time.
const SPEC_YAML: &str = include_str!("../meta/business-messaging-api_v23.0.yaml");

const DRAFT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";
const SCHEMA_REF_PREFIX: &str = "#/components/schemas/";

/// Where the embedded spec is patched before use, and why. Each patch checks that the spec still
/// says what it is patching, so a newer spec fails [`MetaSchema::load`] instead of being silently
/// mis-patched.
pub const ERRATA: &[&str] = &[
    "LanguageObject.required lists `policy`: the Cloud API accepts `language: {code}` alone, as \
     all but one of the spec's own template examples send it, so `policy` is made optional.",
    "TemplateComponent.index pattern `^[2-6, 11-14]$` is a one-character class that rejects \
     index \"0\" (the spec's own examples use it); it becomes `^[0-9]$` (buttons 0 to 9).",
    "BaseMessageProperties lacks `biz_opaque_callback_data` (string, at most 512 characters), \
     which the Cloud API accepts on every message and echoes in status webhooks; it is added.",
];

/// Compiled validators for the message schemas, one per message `type`.
pub struct MetaSchema {
    by_type: BTreeMap<String, MessageValidator>,
}

struct MessageValidator {
    validator: jsonschema::Validator,
    /// Every top-level property the message schema declares (in any `allOf` branch).
    declared: BTreeSet<String>,
}

impl std::fmt::Debug for MetaSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaSchema")
            .field("message_types", &self.by_type.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl MetaSchema {
    /// Parses the embedded spec and compiles one validator per message type. Slow (the spec is
    /// about 1 MB): use [`MetaSchema::shared`] outside tests.
    pub fn load() -> Result<MetaSchema, String> {
        let yaml: serde_yaml::Value = serde_yaml::from_str(SPEC_YAML)
            .map_err(|e| format!("the embedded Meta spec is not YAML: {e}"))?;
        // Through serde_yaml::Value: the spec has integer mapping keys (a `200:` response),
        // which serde_json turns into strings this way.
        let spec: Value = serde_json::to_value(yaml)
            .map_err(|e| format!("the embedded Meta spec is not JSON-compatible: {e}"))?;
        let mut schemas = spec
            .pointer("/components/schemas")
            .and_then(Value::as_object)
            .cloned()
            .ok_or("the spec has no components.schemas")?;
        apply_errata(&mut schemas)?;

        let mapping = discriminator_mapping(&schemas)?;
        let mut declared = BTreeMap::new();
        for target in mapping.values() {
            let mut names = BTreeSet::new();
            declared_properties(&schemas, target, &mut names, 0)?;
            declared.insert(target.clone(), names);
        }
        for target in mapping.values() {
            let schema = schemas
                .get_mut(target)
                .ok_or_else(|| format!("Message maps to missing schema {target}"))?;
            close_object(schema, true);
        }
        for schema in schemas.values_mut() {
            close_object(schema, false);
        }

        let reachable = reachable_schemas(&schemas, mapping.values().map(String::as_str))?;
        let components: Map<String, Value> = schemas
            .into_iter()
            .filter(|(name, _)| reachable.contains(name))
            .collect();
        let components = Value::Object(Map::from_iter([(
            "schemas".to_string(),
            Value::Object(components),
        )]));

        let mut by_type = BTreeMap::new();
        for (message_type, target) in mapping {
            let root = serde_json::json!({
                "$schema": DRAFT_2020_12,
                "$ref": format!("{SCHEMA_REF_PREFIX}{target}"),
                "components": components,
            });
            let validator = jsonschema::options()
                .with_draft(jsonschema::Draft::Draft202012)
                .build(&root)
                .map_err(|e| format!("schema {target} does not compile: {e}"))?;
            let declared = declared.remove(&target).unwrap_or_default();
            by_type.insert(
                message_type,
                MessageValidator {
                    validator,
                    declared,
                },
            );
        }
        Ok(MetaSchema { by_type })
    }

    /// The schema compiled once per process. Panics only if the embedded spec is broken, which
    /// is a build defect (the unit tests load it), never a property of any input.
    pub fn shared() -> &'static MetaSchema {
        static SHARED: OnceLock<MetaSchema> = OnceLock::new();
        SHARED.get_or_init(|| match MetaSchema::load() {
            Ok(schema) => schema,
            Err(e) => panic!("the embedded Meta Cloud API spec is unusable: {e}"),
        })
    }

    /// The message `type`s the spec's discriminator knows (`text`, `template`, …).
    pub fn message_types(&self) -> impl Iterator<Item = &str> {
        self.by_type.keys().map(String::as_str)
    }

    /// Validates a send-message request body. Errors are short sentences naming the JSON
    /// pointer of the offending value (never the value itself), suitable for Meta's
    /// `error_data.details`.
    pub fn validate_message(&self, body: &Value) -> Result<(), Vec<String>> {
        let Some(object) = body.as_object() else {
            return Err(vec!["the request body must be a JSON object".to_string()]);
        };
        let message_type = match object.get("type") {
            None => return Err(vec!["the required parameter type is missing".to_string()]),
            Some(Value::String(t)) => t,
            Some(_) => {
                return Err(vec![
                    "/type: the parameter type must be a string".to_string()
                ])
            }
        };
        let Some(message) = self.by_type.get(message_type) else {
            let known: Vec<&str> = self.message_types().collect();
            return Err(vec![format!(
                "/type: unsupported message type; expected one of {}",
                known.join(", ")
            )]);
        };
        let mut invalid = false;
        let mut errors: Vec<String> = message
            .validator
            .iter_errors(body)
            .inspect(|_| invalid = true)
            .filter_map(|e| {
                let path = e.instance_path().as_str();
                if let (ValidationErrorKind::UnevaluatedProperties { unexpected }, "") =
                    (e.kind(), path)
                {
                    // A branch that fails evaluates nothing, so its declared properties show up
                    // as "unevaluated" next to the real error: report only the unknown ones.
                    let unknown: Vec<String> = unexpected
                        .iter()
                        .filter(|name| !message.declared.contains(name.as_str()))
                        .map(|name| format!("'{name}'"))
                        .collect();
                    return (!unknown.is_empty())
                        .then(|| format!("/: unexpected parameters {}", unknown.join(", ")));
                }
                let path = if path.is_empty() { "/" } else { path };
                Some(format!("{path}: {}", e.masked()))
            })
            .collect();
        if invalid && errors.is_empty() {
            errors.push("/: the message does not match its schema".to_string());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// `Message.discriminator.mapping`: message type → schema name.
fn discriminator_mapping(schemas: &Map<String, Value>) -> Result<BTreeMap<String, String>, String> {
    let mapping = schemas
        .get("Message")
        .and_then(|m| m.pointer("/discriminator/mapping"))
        .and_then(Value::as_object)
        .ok_or("components.schemas.Message has no discriminator.mapping")?;
    let property = schemas
        .get("Message")
        .and_then(|m| m.pointer("/discriminator/propertyName"));
    if property != Some(&Value::from("type")) {
        return Err("Message's discriminator is not on `type`".to_string());
    }
    mapping
        .iter()
        .map(|(message_type, target)| {
            let name = target
                .as_str()
                .and_then(|t| t.strip_prefix(SCHEMA_REF_PREFIX))
                .ok_or_else(|| {
                    format!("discriminator target for {message_type} is not a schema")
                })?;
            Ok((message_type.clone(), name.to_string()))
        })
        .collect()
}

/// Adds to `names` the properties `name` declares itself or through its `allOf` branches.
fn declared_properties(
    schemas: &Map<String, Value>,
    name: &str,
    names: &mut BTreeSet<String>,
    depth: usize,
) -> Result<(), String> {
    if depth > 8 {
        return Err(format!("allOf chain through {name} is too deep"));
    }
    let schema = schemas
        .get(name)
        .ok_or_else(|| format!("$ref to missing schema {name}"))?;
    let branches = schema.get("allOf").and_then(Value::as_array);
    for part in std::iter::once(schema).chain(branches.into_iter().flatten()) {
        if let Some(reference) = part.get("$ref").and_then(Value::as_str) {
            let target = reference
                .strip_prefix(SCHEMA_REF_PREFIX)
                .ok_or_else(|| format!("{name} has a $ref outside components.schemas"))?;
            declared_properties(schemas, target, names, depth + 1)?;
        }
        if let Some(properties) = part.get("properties").and_then(Value::as_object) {
            names.extend(properties.keys().cloned());
        }
    }
    Ok(())
}

/// Moves `additionalProperties: false` out of the inline branches of every `allOf` (recursively)
/// onto the parent as `unevaluatedProperties: false`. With `force`, the top-level schema is closed
/// even if no branch was.
fn close_object(schema: &mut Value, force: bool) {
    let Some(object) = schema.as_object_mut() else {
        if let Value::Array(items) = schema {
            items.iter_mut().for_each(|item| close_object(item, false));
        }
        return;
    };
    let mut closed = false;
    if let Some(Value::Array(branches)) = object.get_mut("allOf") {
        for branch in branches.iter_mut().filter_map(Value::as_object_mut) {
            if !branch.contains_key("$ref")
                && branch.get("additionalProperties") == Some(&Value::Bool(false))
            {
                branch.remove("additionalProperties");
                closed = true;
            }
        }
    }
    if closed || force {
        object.insert("unevaluatedProperties".to_string(), Value::Bool(false));
    }
    object
        .values_mut()
        .for_each(|child| close_object(child, false));
}

/// The names of every schema reachable through `$ref` from `roots`.
fn reachable_schemas<'a>(
    schemas: &Map<String, Value>,
    roots: impl Iterator<Item = &'a str>,
) -> Result<BTreeSet<String>, String> {
    let mut seen = BTreeSet::new();
    let mut pending: Vec<String> = roots.map(str::to_string).collect();
    while let Some(name) = pending.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let schema = schemas
            .get(&name)
            .ok_or_else(|| format!("$ref to missing schema {name}"))?;
        let mut refs = Vec::new();
        collect_refs(schema, &mut refs);
        for reference in refs {
            let target = reference
                .strip_prefix(SCHEMA_REF_PREFIX)
                .ok_or_else(|| format!("{name} has a $ref outside components.schemas"))?;
            if !seen.contains(target) {
                pending.push(target.to_string());
            }
        }
    }
    Ok(seen)
}

fn collect_refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(object) => {
            for (key, child) in object {
                match (key.as_str(), child) {
                    ("$ref", Value::String(reference)) => out.push(reference),
                    // Examples are data, not schemas.
                    ("example" | "examples", _) => {}
                    _ => collect_refs(child, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_refs(item, out)),
        _ => {}
    }
}

/// Applies [`ERRATA`], checking first that the spec still says what each patch corrects.
fn apply_errata(schemas: &mut Map<String, Value>) -> Result<(), String> {
    // 1. LanguageObject: `policy` optional.
    let required = schemas
        .get_mut("LanguageObject")
        .and_then(|s| s.get_mut("required"))
        .and_then(Value::as_array_mut)
        .ok_or("erratum 1: LanguageObject.required not found")?;
    let before = required.len();
    required.retain(|r| r != "policy");
    if required.len() == before {
        return Err("erratum 1: LanguageObject no longer requires policy".to_string());
    }

    // 2. TemplateComponent.index: a real 0-9 pattern.
    let pattern = schemas
        .get_mut("TemplateComponent")
        .and_then(|s| s.pointer_mut("/properties/index/pattern"))
        .ok_or("erratum 2: TemplateComponent.index.pattern not found")?;
    if pattern != "^[2-6, 11-14]$" {
        return Err("erratum 2: TemplateComponent.index.pattern changed".to_string());
    }
    *pattern = Value::from("^[0-9]$");

    // 3. BaseMessageProperties: biz_opaque_callback_data.
    let properties = schemas
        .get_mut("BaseMessageProperties")
        .and_then(|s| s.get_mut("properties"))
        .and_then(Value::as_object_mut)
        .ok_or("erratum 3: BaseMessageProperties.properties not found")?;
    if properties.contains_key("biz_opaque_callback_data") {
        return Err("erratum 3: BaseMessageProperties already has biz_opaque_callback_data".into());
    }
    properties.insert(
        "biz_opaque_callback_data".to_string(),
        serde_json::json!({"type": "string", "maxLength": 512}),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template_message() -> Value {
        json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": "+15551230042",
            "type": "template",
            "template": {
                "name": "order_confirmation",
                "language": {"code": "en_US"},
                "components": [
                    {"type": "body", "parameters": [{"type": "text", "text": "Ada"}]},
                    {"type": "button", "sub_type": "quick_reply", "index": "0",
                     "parameters": [{"type": "payload", "payload": "DETAILS"}]}
                ]
            }
        })
    }

    fn text_message() -> Value {
        json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": "15551230042",
            "type": "text",
            "text": {"body": "Hello", "preview_url": false}
        })
    }

    fn errors_of(body: &Value) -> Vec<String> {
        match MetaSchema::shared().validate_message(body) {
            Ok(()) => panic!("expected {body} to be rejected"),
            Err(errors) => errors,
        }
    }

    /// The spec's own request examples that contradict its own schemas, and so are refused.
    const INCONSISTENT_EXAMPLES: &[(&str, &str)] = &[
        (
            "Send Catalog Template Message",
            "button index is a number; sub_type CATALOG",
        ),
        ("Send Contact Message", "no recipient_type"),
        (
            "Send Flow Template Message",
            "no recipient_type; sub_type flow not in the enum",
        ),
        (
            "Send Location Message",
            "latitude and longitude are numbers, not strings",
        ),
        ("Send Multi-Product Message", "header type is a placeholder"),
        (
            "Send Order Details Message",
            "interactive type order_details not in the enum",
        ),
        (
            "Send Order Status Message",
            "interactive type order_status not in the enum",
        ),
        ("Send Reply to Contact Message", "no recipient_type"),
        ("Send Reply to List Message", "no type"),
        (
            "Send Reply to Location Message",
            "latitude and longitude are numbers",
        ),
        (
            "Send Sample Issue Resolution Template",
            "no recipient_type; index numbers",
        ),
        ("Send Test Message", "no recipient_type"),
        ("Send Text Message with Preview URL", "no type"),
        (
            "Send typing indicator and read receipt",
            "not a message: a read receipt",
        ),
    ];

    #[test]
    fn the_specs_own_examples_pass_except_those_contradicting_its_schemas() {
        let yaml: serde_yaml::Value = serde_yaml::from_str(SPEC_YAML).expect("yaml");
        let spec: Value = serde_json::to_value(yaml).expect("json");
        let examples = spec
            .pointer(
                "/paths/~1{Version}~1{Phone-Number-ID}~1messages/post/requestBody\
                 /content/application~1json/examples",
            )
            .and_then(Value::as_object)
            .expect("send-message examples");
        let mut surprises = Vec::new();
        let mut passed = 0;
        for (name, example) in examples {
            let result = MetaSchema::shared().validate_message(&example["value"]);
            let inconsistent = INCONSISTENT_EXAMPLES.iter().any(|(n, _)| n == name);
            match (result, inconsistent) {
                (Ok(()), false) => {
                    passed += 1;
                    // Every message type's top level is closed.
                    let mut extended = example["value"].clone();
                    extended["colour"] = json!("blue");
                    if MetaSchema::shared().validate_message(&extended).is_ok() {
                        surprises.push(format!("{name}: an unknown field passed"));
                    }
                }
                (Err(_), true) => {}
                (result, _) => surprises.push(format!("{name}: {result:?}")),
            }
        }
        assert!(surprises.is_empty(), "{surprises:#?}");
        assert_eq!(passed + INCONSISTENT_EXAMPLES.len(), examples.len());
        assert!(passed >= 30, "{passed}");
    }

    #[test]
    fn a_missing_property_is_not_also_reported_as_unexpected() {
        let mut body = template_message();
        body.as_object_mut()
            .expect("object")
            .remove("recipient_type");
        body["colour"] = json!("blue");
        let errors = errors_of(&body);
        assert_eq!(
            errors,
            [
                "/: \"recipient_type\" is a required property",
                "/: unexpected parameters 'colour'"
            ]
        );
    }

    #[test]
    fn the_embedded_spec_loads_and_maps_eleven_message_types() {
        let schema = MetaSchema::load().expect("embedded spec");
        let types: Vec<&str> = schema.message_types().collect();
        assert_eq!(
            types,
            [
                "audio",
                "contacts",
                "document",
                "image",
                "interactive",
                "location",
                "reaction",
                "sticker",
                "template",
                "text",
                "video"
            ]
        );
    }

    #[test]
    fn a_valid_template_message_passes() {
        assert_eq!(
            MetaSchema::shared().validate_message(&template_message()),
            Ok(())
        );
    }

    #[test]
    fn a_valid_text_message_passes() {
        assert_eq!(
            MetaSchema::shared().validate_message(&text_message()),
            Ok(())
        );
    }

    #[test]
    fn a_message_carrying_biz_opaque_callback_data_passes() {
        let mut body = template_message();
        body["biz_opaque_callback_data"] = json!("order-42");
        assert_eq!(MetaSchema::shared().validate_message(&body), Ok(()));
    }

    #[test]
    fn a_message_without_to_fails() {
        let mut body = template_message();
        body.as_object_mut().expect("object").remove("to");
        let errors = errors_of(&body);
        assert!(errors.iter().any(|e| e.contains("\"to\"")), "{errors:?}");
    }

    #[test]
    fn a_template_that_is_not_an_object_fails() {
        let mut body = template_message();
        body["template"] = json!("order_confirmation");
        let errors = errors_of(&body);
        assert!(
            errors.iter().any(|e| e.starts_with("/template")),
            "{errors:?}"
        );
        // The value itself is not echoed.
        assert!(
            !errors.iter().any(|e| e.contains("order_confirmation")),
            "{errors:?}"
        );
    }

    #[test]
    fn an_unknown_top_level_field_fails_in_template_and_text_messages() {
        let mut template = template_message();
        template["colour"] = json!("blue");
        let errors = errors_of(&template);
        assert!(errors.iter().any(|e| e.contains("colour")), "{errors:?}");

        let mut text = text_message();
        text["colour"] = json!("blue");
        let errors = errors_of(&text);
        assert!(errors.iter().any(|e| e.contains("colour")), "{errors:?}");
    }

    #[test]
    fn an_unknown_field_inside_a_closed_object_still_fails() {
        let mut text = text_message();
        text["text"]["colour"] = json!("blue");
        errors_of(&text);
    }

    #[test]
    fn an_unknown_or_missing_type_fails() {
        let mut body = text_message();
        body["type"] = json!("hologram");
        let errors = errors_of(&body);
        assert!(errors[0].contains("unsupported message type"), "{errors:?}");

        body.as_object_mut().expect("object").remove("type");
        let errors = errors_of(&body);
        assert!(errors[0].contains("type"), "{errors:?}");

        body["type"] = json!(7);
        errors_of(&body);
    }

    #[test]
    fn a_body_that_is_not_an_object_fails() {
        errors_of(&json!(["to", "type"]));
    }

    #[test]
    fn the_type_must_match_the_content_it_names() {
        // `type: text` with a template payload: `text` is missing and `template` is unexpected.
        let mut body = template_message();
        body["type"] = json!("text");
        let errors = errors_of(&body);
        assert!(errors.iter().any(|e| e.contains("template")), "{errors:?}");
    }
}
