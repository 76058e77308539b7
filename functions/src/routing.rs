//! Choosing a model from an invocation's input, as in an e-commerce catalogue where each
//! product category has its own vertical model.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{InputError, ModelId};

/// `input[field]` selects a model from `cases`; anything else goes to `default`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub field: String,
    pub cases: BTreeMap<String, ModelId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<ModelId>,
}

impl Route {
    pub fn choose(&self, input: &Value) -> Result<&ModelId, InputError> {
        let selected = input
            .get(&self.field)
            .and_then(Value::as_str)
            .and_then(|key| self.cases.get(key));
        selected
            .or(self.default.as_ref())
            .ok_or_else(|| InputError::Route {
                field: self.field.clone(),
            })
    }

    /// Every model this route can send to, for validation at deploy time.
    pub fn targets(&self) -> impl Iterator<Item = &ModelId> {
        self.cases.values().chain(self.default.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn route() -> Route {
        Route {
            field: "category".into(),
            cases: [("fashion".to_owned(), ModelId::new("fashion-model"))].into(),
            default: Some(ModelId::new("general")),
        }
    }

    #[test]
    fn matching_case_wins_and_others_fall_back() {
        let r = route();
        assert_eq!(
            r.choose(&json!({"category": "fashion"})).unwrap().as_str(),
            "fashion-model"
        );
        assert_eq!(
            r.choose(&json!({"category": "garden"})).unwrap().as_str(),
            "general"
        );
        assert_eq!(r.choose(&json!({})).unwrap().as_str(), "general");
    }

    #[test]
    fn without_default_a_missing_field_is_an_input_error() {
        let mut r = route();
        r.default = None;
        assert!(matches!(
            r.choose(&json!({"category": 3})),
            Err(InputError::Route { .. })
        ));
    }
}
