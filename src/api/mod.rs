//! The `ModelDeployment` API (`mlops.sathvik.dev/v1`): the CRD types, their schema and CEL rules,
//! the condition vocabulary, and the offline admission check that `render` uses.

pub mod admission;
pub mod conditions;
mod model_deployment;
mod pod_fields;

pub use model_deployment::*;

/// API group of every custom resource this operator owns.
pub use crate::vocabulary::names::API_GROUP as GROUP;

#[cfg(test)]
mod tests {
    use kube::Resource;

    use super::*;

    #[test]
    fn the_derived_group_is_the_vocabulary_group() {
        assert_eq!(ModelDeployment::group(&()), GROUP);
    }
}
