//! The `labelSelector` query parameter as the API server reads it (`k8s.io/apimachinery`
//! `labels.Parse`): the HPA sends its target's selector in this form to pick the pods to average.

use std::collections::BTreeMap;

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("labelSelector {selector:?}: {problem}")]
pub struct SelectorError {
    selector: String,
    problem: SelectorProblem,
}

/// What is wrong in one selector.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SelectorProblem {
    #[error("unbalanced '{0}'")]
    Unbalanced(char),
    #[error("{0:?}: missing ')'")]
    MissingClose(String),
    #[error("{0:?}: expected `KEY in (...)` or `KEY notin (...)`")]
    NotASetTerm(String),
    #[error("{0:?} is not a label key")]
    NotAKey(String),
    #[error("{0:?} is not a label value")]
    NotAValue(String),
}

impl LabelSelector {
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let error = |problem: SelectorProblem| SelectorError {
            selector: text.to_owned(),
            problem,
        };
        let mut requirements = Vec::new();
        for term in split_terms(text).map_err(error)? {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            requirements.push(parse_term(term).map_err(error)?);
        }
        Ok(Self(requirements))
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|requirement| match requirement {
            Requirement::Equals(key, value) => labels.get(key) == Some(value),
            // As in Kubernetes, `!=` also matches objects without the label.
            Requirement::NotEquals(key, value) => labels.get(key) != Some(value),
            Requirement::In(key, values) => labels.get(key).is_some_and(|v| values.contains(v)),
            Requirement::NotIn(key, values) => labels.get(key).is_none_or(|v| !values.contains(v)),
            Requirement::Exists(key) => labels.contains_key(key),
            Requirement::DoesNotExist(key) => !labels.contains_key(key),
        })
    }
}

/// Splits on the commas that are not inside an `in (...)` value list.
fn split_terms(text: &str) -> Result<Vec<&str>, SelectorProblem> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (index, character) in text.char_indices() {
        match character {
            '(' => depth += 1,
            ')' => depth = depth.checked_sub(1).ok_or(SelectorProblem::Unbalanced(')'))?,
            ',' if depth == 0 => {
                terms.push(&text[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(SelectorProblem::Unbalanced('('));
    }
    terms.push(&text[start..]);
    Ok(terms)
}

fn parse_term(term: &str) -> Result<Requirement, SelectorProblem> {
    if let Some(key) = term.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(key_of(key)?));
    }
    for (operator, make) in [
        ("!=", Requirement::NotEquals as fn(String, String) -> Requirement),
        ("==", Requirement::Equals),
        ("=", Requirement::Equals),
    ] {
        if let Some((key, value)) = term.split_once(operator) {
            return Ok(make(key_of(key)?, value_of(value)?));
        }
    }
    if let Some(open) = term.find('(') {
        let close = term
            .rfind(')')
            .ok_or_else(|| SelectorProblem::MissingClose(term.to_owned()))?;
        let head: Vec<&str> = term[..open].split_whitespace().collect();
        let values = term[open + 1..close]
            .split(',')
            .map(value_of)
            .collect::<Result<Vec<_>, _>>()?;
        return match head.as_slice() {
            [key, "in"] => Ok(Requirement::In(key_of(key)?, values)),
            [key, "notin"] => Ok(Requirement::NotIn(key_of(key)?, values)),
            _ => Err(SelectorProblem::NotASetTerm(term.to_owned())),
        };
    }
    Ok(Requirement::Exists(key_of(term)?))
}

fn key_of(text: &str) -> Result<String, SelectorProblem> {
    let key = text.trim();
    let valid = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if valid {
        Ok(key.to_owned())
    } else {
        Err(SelectorProblem::NotAKey(key.to_owned()))
    }
}

fn value_of(text: &str) -> Result<String, SelectorProblem> {
    let value = text.trim();
    if value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        Ok(value.to_owned())
    } else {
        Err(SelectorProblem::NotAValue(value.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn equality_terms_are_anded() {
        let selector = LabelSelector::parse("app.kubernetes.io/name=llm,model==llm").unwrap();
        assert!(selector.matches(&labels(&[("app.kubernetes.io/name", "llm"), ("model", "llm")])));
        assert!(!selector.matches(&labels(&[("app.kubernetes.io/name", "llm")])));
        assert!(!selector.matches(&labels(&[("app.kubernetes.io/name", "x"), ("model", "llm")])));
    }

    #[test]
    fn set_and_existence_terms() {
        let selector = LabelSelector::parse("tier in (gpu, tpu),env notin (dev),team,!legacy,zone!=b").unwrap();
        assert!(selector.matches(&labels(&[("tier", "gpu"), ("team", "ml")])));
        assert!(selector.matches(&labels(&[
            ("tier", "tpu"),
            ("team", "ml"),
            ("env", "prod"),
            ("zone", "a")
        ])));
        assert!(!selector.matches(&labels(&[("tier", "cpu"), ("team", "ml")])));
        assert!(!selector.matches(&labels(&[("tier", "gpu"), ("team", "ml"), ("env", "dev")])));
        assert!(!selector.matches(&labels(&[("tier", "gpu")])));
        assert!(!selector.matches(&labels(&[("tier", "gpu"), ("team", "ml"), ("legacy", "")])));
        assert!(!selector.matches(&labels(&[("tier", "gpu"), ("team", "ml"), ("zone", "b")])));
    }

    #[test]
    fn empty_selector_matches_everything() {
        assert!(LabelSelector::parse("").unwrap().matches(&labels(&[])));
    }

    #[test]
    fn malformed_selectors_name_the_problem() {
        let error = LabelSelector::parse("tier in (gpu").unwrap_err();
        assert_eq!(error.to_string(), r#"labelSelector "tier in (gpu": unbalanced '('"#);
        let error = LabelSelector::parse("a=b c").unwrap_err();
        assert!(error.to_string().contains(r#""b c" is not a label value"#), "{error}");
        let error = LabelSelector::parse("tier within (a)").unwrap_err();
        assert!(error.to_string().contains("expected `KEY in (...)`"), "{error}");
    }
}
