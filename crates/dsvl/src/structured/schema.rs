//! The JSON Schema subset: which keywords constrain the answer, which are refused (with their
//! JSON path, never silently ignored), and the compact-output options given to llguidance.

use serde_json::{Map, Value};

/// Keywords that constrain the generated JSON (llguidance's implemented set).
pub const SUPPORTED_KEYWORDS: &[&str] = &[
    "type",
    "enum",
    "const",
    "anyOf",
    "oneOf",
    "allOf",
    "$ref",
    "properties",
    "required",
    "additionalProperties",
    "patternProperties",
    "minProperties",
    "maxProperties",
    "items",
    "prefixItems",
    "additionalItems",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
];

/// Validation keywords of JSON Schema (draft 4 to 2020-12) that llguidance cannot enforce while
/// generating: a schema using one is refused rather than half-applied.
pub const UNSUPPORTED_KEYWORDS: &[&str] = &[
    "not",
    "if",
    "then",
    "else",
    "dependencies",
    "dependentRequired",
    "dependentSchemas",
    "uniqueItems",
    "contains",
    "minContains",
    "maxContains",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
    "$dynamicRef",
    "$dynamicAnchor",
    "$recursiveRef",
    "$recursiveAnchor",
];

/// Keywords whose value is one subschema.
const SUBSCHEMA: &[&str] = &[
    "additionalProperties",
    "additionalItems",
    "items",
    "not",
    "if",
    "then",
    "else",
    "contains",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
];
/// Keywords whose value is an array of subschemas.
const SUBSCHEMA_ARRAY: &[&str] = &["anyOf", "oneOf", "allOf", "prefixItems", "items"];
/// Keywords whose value maps names to subschemas.
const SUBSCHEMA_MAP: &[&str] = &[
    "properties",
    "patternProperties",
    "$defs",
    "definitions",
    "dependentSchemas",
];

/// Our options for llguidance's JSON compiler, under the schema's `x-guidance` key.
const OPTIONS_KEY: &str = "x-guidance";

/// The schema must be an object (or `true`), and use no unsupported keyword; the error names
/// the first one found with its JSON path (`/properties/items/uniqueItems`).
pub(super) fn check(schema: &Value) -> Result<(), String> {
    match schema {
        Value::Object(map) => {
            if map.contains_key(OPTIONS_KEY) {
                return Err(format!(
                    "`{OPTIONS_KEY}` at the top level is not accepted; the engine sets the output options itself"
                ));
            }
            walk(map, &mut String::new())
        }
        Value::Bool(true) => Ok(()),
        other => Err(format!(
            "the schema must be a JSON object, got {}",
            type_name(other)
        )),
    }
}

fn walk(map: &Map<String, Value>, path: &mut String) -> Result<(), String> {
    for (key, value) in map {
        let len = path.len();
        path.push('/');
        path.push_str(&escape(key));
        if UNSUPPORTED_KEYWORDS.contains(&key.as_str()) {
            return Err(format!(
                "keyword `{key}` at {path} is not supported (it cannot be enforced while generating); remove it, or check it after generation. Supported: {}",
                SUPPORTED_KEYWORDS.join(", ")
            ));
        }
        let k = key.as_str();
        if SUBSCHEMA.contains(&k) {
            if let Value::Object(sub) = value {
                walk(sub, path)?;
            }
        }
        if SUBSCHEMA_ARRAY.contains(&k) {
            if let Value::Array(items) = value {
                for (i, item) in items.iter().enumerate() {
                    if let Value::Object(sub) = item {
                        let l = path.len();
                        path.push_str(&format!("/{i}"));
                        walk(sub, path)?;
                        path.truncate(l);
                    }
                }
            }
        }
        if SUBSCHEMA_MAP.contains(&k) {
            if let Value::Object(named) = value {
                for (name, item) in named {
                    if let Value::Object(sub) = item {
                        let l = path.len();
                        path.push('/');
                        path.push_str(&escape(name));
                        walk(sub, path)?;
                        path.truncate(l);
                    }
                }
            }
        }
        path.truncate(len);
    }
    Ok(())
}

/// JSON Pointer escaping (RFC 6901).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `schema` with llguidance's compact-output options: no whitespace anywhere between tokens
/// (`,` and `:` separators, as `json.dumps(separators=(",", ":"))` writes), and unsupported
/// keywords are errors, not warnings.
pub(super) fn compact(schema: &Value) -> Value {
    let options = serde_json::json!({
        "whitespace_flexible": false,
        "item_separator": ",",
        "key_separator": ":",
        "lenient": false,
    });
    match schema {
        Value::Object(map) => {
            let mut map = map.clone();
            map.insert(OPTIONS_KEY.into(), options);
            Value::Object(map)
        }
        // `true`: any JSON value.
        _ => serde_json::json!({ OPTIONS_KEY: options }),
    }
}
