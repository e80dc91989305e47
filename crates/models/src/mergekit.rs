//! mergekit passthrough merges ("frankenmerges") read as layer plans.
//!
//! A passthrough merge stacks slices of one model's layers:
//!
//! ```yaml
//! slices:
//!   - sources:
//!       - model: HuggingFaceTB/SmolLM2-135M
//!         layer_range: [0, 24]
//!   - sources:
//!       - model: HuggingFaceTB/SmolLM2-135M
//!         layer_range: [8, 30]
//! merge_method: passthrough
//! dtype: bfloat16
//! ```
//!
//! Ranges are half-open (`[0, 24]` is layers 0 to 23), so this is the plan
//! `0-23,8-29`. patchbay runs it over the original weights: nothing is copied
//! and no file is written.

use patchbay_combinators::{Plan, PlanStep};
use serde::Deserialize;

/// Why a merge file could not be read as a plan.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MergeError {
    /// The YAML does not parse or does not have mergekit's shape.
    #[error("not a mergekit YAML file: {0}")]
    Yaml(String),
    /// A merge method other than `passthrough`.
    #[error(
        "merge_method '{0}' is not supported: only 'passthrough' (stacking layer slices) \
         runs as a layer plan"
    )]
    Method(String),
    /// Slices from different models.
    #[error(
        "different source models are not supported: '{first}' and '{second}' \
         (a passthrough plan re-wires the layers of one model)"
    )]
    Models {
        /// The first model named.
        first: String,
        /// The first other model named.
        second: String,
    },
    /// A slice whose shape or range is wrong.
    #[error("slice {slice}: {why}")]
    Slice {
        /// The slice, counted from 0.
        slice: usize,
        /// What is wrong.
        why: String,
    },
    /// No slices.
    #[error("the merge has no slices")]
    Empty,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    slices: Vec<Slice>,
    merge_method: String,
    #[serde(default)]
    #[allow(dead_code)]
    dtype: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    base_model: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Slice {
    sources: Vec<Source>,
}

#[derive(Debug, Deserialize)]
struct Source {
    model: String,
    layer_range: Vec<i64>,
}

/// The layer plan of a mergekit passthrough merge over a model of
/// `n_layers` layers.
///
/// ```
/// use patchbay_models::mergekit::plan_from_yaml;
/// let yaml = "slices:\n\
///   - sources: [{model: m, layer_range: [0, 24]}]\n\
///   - sources: [{model: m, layer_range: [8, 30]}]\n\
/// merge_method: passthrough\n";
/// assert_eq!(plan_from_yaml(yaml, 30).unwrap().to_string(), "0-23,8-29");
/// ```
///
/// # Errors
///
/// [`MergeError`]: unreadable YAML (with its line and column), another merge
/// method, slices from different models, a slice with other than one source
/// or with a bad range (naming the slice), or no slices.
pub fn plan_from_yaml(yaml: &str, n_layers: usize) -> Result<Plan, MergeError> {
    let config: Config =
        serde_norway::from_str(yaml).map_err(|e| MergeError::Yaml(e.to_string()))?;
    if config.merge_method != "passthrough" {
        return Err(MergeError::Method(config.merge_method));
    }
    if config.slices.is_empty() {
        return Err(MergeError::Empty);
    }
    let mut first_model: Option<&str> = None;
    let mut steps = Vec::new();
    for (i, slice) in config.slices.iter().enumerate() {
        let bad = |why: String| MergeError::Slice { slice: i, why };
        let [source] = slice.sources.as_slice() else {
            return Err(bad(format!(
                "has {} sources; a passthrough slice takes exactly one",
                slice.sources.len()
            )));
        };
        match first_model {
            None => first_model = Some(&source.model),
            Some(m) if m != source.model => {
                return Err(MergeError::Models {
                    first: m.to_string(),
                    second: source.model.clone(),
                })
            }
            Some(_) => {}
        }
        let &[a, b] = source.layer_range.as_slice() else {
            return Err(bad(format!(
                "layer_range must be [start, end], not {:?}",
                source.layer_range
            )));
        };
        if a < 0 || b <= a || b as u64 > n_layers as u64 {
            return Err(bad(format!(
                "layer_range [{a}, {b}] must satisfy 0 <= start < end <= {n_layers} \
                 (ranges are half-open; the model has {n_layers} layers)"
            )));
        }
        steps.extend((a as usize..b as usize).map(PlanStep::Layer));
    }
    Plan::from_steps(steps, n_layers).map_err(|e| MergeError::Yaml(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merge(slices: &[(&str, i64, i64)], method: &str) -> String {
        let mut s = String::from("slices:\n");
        for (m, a, b) in slices {
            s.push_str(&format!(
                "  - sources:\n      - model: {m}\n        layer_range: [{a}, {b}]\n"
            ));
        }
        s.push_str(&format!("merge_method: {method}\ndtype: bfloat16\n"));
        s
    }

    #[test]
    fn up_scaling_equals_the_plan_string() {
        let y = merge(&[("m", 0, 24), ("m", 8, 32)], "passthrough");
        assert_eq!(
            plan_from_yaml(&y, 32).unwrap(),
            Plan::parse("0-23,8-31", 32).unwrap()
        );
        let y = merge(&[("m", 0, 30)], "passthrough");
        assert!(plan_from_yaml(&y, 30).unwrap().is_identity(30));
    }

    #[test]
    fn every_error_says_what_is_wrong() {
        let e = plan_from_yaml(&merge(&[("m", 0, 4)], "slerp"), 30).unwrap_err();
        assert!(e.to_string().contains("merge_method 'slerp'"), "{e}");
        let e =
            plan_from_yaml(&merge(&[("a/x", 0, 4), ("b/y", 4, 8)], "passthrough"), 30).unwrap_err();
        assert!(e.to_string().contains("'a/x' and 'b/y'"), "{e}");
        for (a, b) in [(4, 4), (5, 2), (-1, 3), (0, 31)] {
            let y = merge(&[("m", 0, 2), ("m", a, b)], "passthrough");
            let e = plan_from_yaml(&y, 30).unwrap_err();
            assert!(
                matches!(e, MergeError::Slice { slice: 1, .. }),
                "[{a}, {b}]: {e}"
            );
            assert!(e.to_string().starts_with("slice 1: layer_range"), "{e}");
        }
        let e = plan_from_yaml("slices: [\n  - sources: {", 30).unwrap_err();
        assert!(
            matches!(&e, MergeError::Yaml(m) if m.contains("line") && m.contains("column")),
            "{e}"
        );
        let e = plan_from_yaml("merge_method: passthrough\n", 30).unwrap_err();
        assert_eq!(e, MergeError::Empty);
        let y = "slices:\n  - sources:\n      - {model: m, layer_range: [0, 2]}\n      - {model: m, layer_range: [0, 2]}\nmerge_method: passthrough\n";
        let e = plan_from_yaml(y, 30).unwrap_err();
        assert!(e.to_string().contains("slice 0: has 2 sources"), "{e}");
        let y = "slices:\n  - sources:\n      - {model: m, layer_range: [0, 2, 3]}\nmerge_method: passthrough\n";
        assert!(matches!(
            plan_from_yaml(y, 30),
            Err(MergeError::Slice { slice: 0, .. })
        ));
    }
}
