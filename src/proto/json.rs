//! JSON <-> `google.protobuf.Struct`, for the messages that carry free-form
//! objects: a validated token's claims and a decision's context.

use prost_types::value::Kind;
use serde_json::{Map, Number, Value};

/// A JSON object as a protobuf Struct. Struct has no integers: numbers
/// become doubles (clients read whole ones back as integers).
pub fn to_struct(map: Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
    }
}

fn to_value(value: Value) -> prost_types::Value {
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(to_value).collect(),
        }),
        Value::Object(map) => Kind::StructValue(to_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// A protobuf Struct as a JSON object. protobuf decoding bounds its
/// nesting (100 levels), so this recursion is bounded too.
pub fn from_struct(value: prost_types::Struct) -> Map<String, Value> {
    value
        .fields
        .into_iter()
        .map(|(key, value)| (key, from_value(value)))
        .collect()
}

fn from_value(value: prost_types::Value) -> Value {
    match value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        // Struct numbers are doubles: whole ones read back as integers.
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9e15 => Value::from(n as i64),
        Some(Kind::NumberValue(n)) => Number::from_f64(n).map_or(Value::Null, Value::Number),
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::ListValue(list)) => Value::Array(list.values.into_iter().map(from_value).collect()),
        Some(Kind::StructValue(s)) => Value::Object(from_struct(s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_objects_round_trip_with_whole_numbers_as_integers() {
        let json = serde_json::json!({"n": 3, "f": 0.5, "s": "x", "b": true, "z": null,
                                      "list": [1, "a", {"deep": [false]}]});
        let Value::Object(map) = json.clone() else {
            unreachable!()
        };
        assert_eq!(Value::Object(from_struct(to_struct(map))), json);
    }

    #[test]
    fn numbers_json_cannot_hold_become_null() {
        let nan = prost_types::Value {
            kind: Some(Kind::NumberValue(f64::NAN)),
        };
        let value = prost_types::Struct {
            fields: [("nan".to_owned(), nan)].into_iter().collect(),
        };
        assert_eq!(
            Value::Object(from_struct(value)),
            serde_json::json!({"nan": null})
        );
    }
}
