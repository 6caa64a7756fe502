//! GPU placement: the extended resource a replica asks for, the node labels it needs (GPU
//! feature discovery's `nvidia.com/gpu.*`), and the toleration for the GPU taint. The
//! `GpuPlacement` itself is a shared word (`crate::vocabulary`); what it means is here.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Affinity, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Toleration},
    apimachinery::pkg::api::resource::Quantity,
};

use crate::{
    api::GpuSpec,
    vocabulary::{
        DRA_GPU_CLASS, DRA_MIG_CLASS, DeviceRequirements, GPU_RESOURCE, GPU_TAINT_KEY, GpuAllocation, GpuPlacement,
        GpuSharing, MEMORY_LABEL, PRODUCT_LABEL,
    },
};

impl GpuPlacement {
    pub fn from_spec(gpu: &GpuSpec) -> Self {
        let profile = gpu.mig_profile.as_deref().filter(|_| gpu.sharing == GpuSharing::Mig);
        let resource = match profile {
            Some(profile) => format!("nvidia.com/mig-{profile}"),
            None => GPU_RESOURCE.to_owned(),
        };
        let products = gpu
            .products
            .iter()
            .flat_map(|product| product_spellings(product, gpu.sharing, profile))
            .collect();
        let memory_label = match profile {
            Some(profile) => format!("nvidia.com/mig-{profile}.memory"),
            None => MEMORY_LABEL.to_owned(),
        };
        let devices = DeviceRequirements {
            device_class: if profile.is_some() {
                DRA_MIG_CLASS
            } else {
                DRA_GPU_CLASS
            }
            .to_owned(),
            mig_profile: profile.map(str::to_owned),
            products: gpu.products.clone(),
            min_memory_mib: gpu.min_memory_mib,
            architectures: gpu.architectures.clone(),
            min_compute_capability: gpu.min_compute_capability.as_deref().and_then(major_minor),
        };
        Self {
            resource,
            count: gpu.count,
            sharing: gpu.sharing,
            products,
            min_memory: gpu.min_memory_mib.map(|mib| (memory_label, mib)),
            // Time-slicing is the device plugin's (the schema refuses it with `dra`).
            allocation: match (gpu.allocation, gpu.sharing) {
                (GpuAllocation::Auto, GpuSharing::TimeSliced) => GpuAllocation::DevicePlugin,
                (allocation, _) => allocation,
            },
            devices,
        }
    }

    /// The GPUs come from a ResourceClaim (the allocation resolved to DRA).
    pub fn uses_dra(&self) -> bool {
        self.allocation == GpuAllocation::Dra
    }

    /// The resource limit (and, as extended resources require, the equal request).
    pub fn resource_quantities(&self) -> BTreeMap<String, Quantity> {
        BTreeMap::from([(self.resource.clone(), Quantity(self.count.to_string()))])
    }

    /// Node requirements that every acceptable node meets. With DRA the scheduler picks the
    /// node from the devices' attributes, and GFD labels may not exist at all.
    pub fn node_requirements(&self) -> Vec<NodeSelectorRequirement> {
        let mut requirements = Vec::new();
        if self.uses_dra() {
            return requirements;
        }
        if !self.products.is_empty() {
            requirements.push(NodeSelectorRequirement {
                key: PRODUCT_LABEL.to_owned(),
                operator: "In".to_owned(),
                values: Some(self.products.clone()),
            });
        }
        if let Some((label, mib)) = &self.min_memory {
            // `Gt` is strict; "at least N MiB" is "greater than N-1".
            requirements.push(NodeSelectorRequirement {
                key: label.clone(),
                operator: "Gt".to_owned(),
                values: Some(vec![(mib - 1).to_string()]),
            });
        }
        requirements
    }

    /// Tolerates the GPU taint. Not every cluster enables the ExtendedResourceToleration
    /// admission plugin that would add it, so it is always explicit.
    pub fn toleration() -> Toleration {
        Toleration {
            key: Some(GPU_TAINT_KEY.to_owned()),
            operator: Some("Exists".to_owned()),
            effect: Some("NoSchedule".to_owned()),
            ..Toleration::default()
        }
    }

    /// Whether a node with these labels is acceptable (resources aside).
    pub fn matches_node(&self, labels: &BTreeMap<String, String>) -> bool {
        if self.uses_dra() {
            // The devices carry the product and memory (`crate::gpu::dra`), not the node.
            return true;
        }
        let product_ok =
            self.products.is_empty() || labels.get(PRODUCT_LABEL).is_some_and(|p| self.products.contains(p));
        let memory_ok = match &self.min_memory {
            None => true,
            Some((label, mib)) => labels
                .get(label)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|have| have >= *mib),
        };
        product_ok && memory_ok
    }

    /// Human description of one replica's demand: "2 × nvidia.com/gpu on NVIDIA-A100-SXM4-80GB".
    pub fn describe(&self) -> String {
        if self.uses_dra() {
            return self.devices.describe(self.count);
        }
        let mut text = format!("{} × {}", self.count, self.resource);
        if !self.products.is_empty() {
            // The first spelling of each product is its plain name; the rest are variants.
            let plain: Vec<&str> = self
                .products
                .iter()
                .filter(|p| !p.ends_with("-SHARED") && !p.contains("-MIG-"))
                .map(String::as_str)
                .collect();
            let shown = if plain.is_empty() {
                self.products.iter().map(String::as_str).collect()
            } else {
                plain
            };
            text.push_str(&format!(" on {}", shown.join(" or ")));
        }
        if let Some((_, mib)) = &self.min_memory {
            text.push_str(&format!(" with ≥ {mib} MiB"));
        }
        text
    }
}

/// `"8.0"` as (8, 0); the schema admits only `major.minor`.
fn major_minor(text: &str) -> Option<(u64, u64)> {
    let (major, minor) = text.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The label values one product takes under a sharing mode: exclusive GPUs match the plain
/// name; time-sliced nodes rename the product `<product>-SHARED`; MIG nodes carry
/// `<product>-MIG-<profile>` (and `-SHARED` when slices are also time-shared).
fn product_spellings(product: &str, sharing: GpuSharing, mig_profile: Option<&str>) -> Vec<String> {
    match (sharing, mig_profile) {
        (GpuSharing::Exclusive, _) => vec![product.to_owned()],
        (GpuSharing::TimeSliced, _) => vec![product.to_owned(), format!("{product}-SHARED")],
        (GpuSharing::Mig, Some(profile)) => vec![
            product.to_owned(),
            format!("{product}-MIG-{profile}"),
            format!("{product}-MIG-{profile}-SHARED"),
        ],
        (GpuSharing::Mig, None) => vec![product.to_owned()],
    }
}

/// Adds `requirements` to the user's node affinity so that both hold: node selector terms are
/// ORed by Kubernetes, so the requirements go into every term (or a new single term).
pub fn merge_node_requirements(
    affinity: Option<Affinity>,
    requirements: Vec<NodeSelectorRequirement>,
) -> Option<Affinity> {
    if requirements.is_empty() {
        return affinity;
    }
    let mut affinity = affinity.unwrap_or_default();
    let node_affinity = affinity.node_affinity.get_or_insert_with(NodeAffinity::default);
    let required = node_affinity
        .required_during_scheduling_ignored_during_execution
        .get_or_insert_with(|| NodeSelector {
            node_selector_terms: Vec::new(),
        });
    if required.node_selector_terms.is_empty() {
        required.node_selector_terms.push(NodeSelectorTerm::default());
    }
    for term in &mut required.node_selector_terms {
        term.match_expressions
            .get_or_insert_with(Vec::new)
            .extend(requirements.iter().cloned());
    }
    Some(affinity)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(yaml: &str) -> GpuSpec {
        serde_yaml_ng::from_str(yaml).expect("fixture parses")
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn exclusive_gpus_match_the_plain_product_only() {
        let placement = GpuPlacement::from_spec(&gpu("count: 2\nproducts: [NVIDIA-A100-SXM4-80GB]"));
        assert_eq!(placement.resource, "nvidia.com/gpu");
        assert_eq!(placement.products, ["NVIDIA-A100-SXM4-80GB"]);
        assert!(placement.matches_node(&labels(&[(PRODUCT_LABEL, "NVIDIA-A100-SXM4-80GB")])));
        assert!(!placement.matches_node(&labels(&[(PRODUCT_LABEL, "NVIDIA-A100-SXM4-80GB-SHARED")])));
        assert_eq!(placement.describe(), "2 × nvidia.com/gpu on NVIDIA-A100-SXM4-80GB");
    }

    #[test]
    fn time_sliced_accepts_the_shared_variant() {
        let placement = GpuPlacement::from_spec(&gpu("products: [Tesla-T4]\nsharing: time-sliced"));
        assert_eq!(placement.products, ["Tesla-T4", "Tesla-T4-SHARED"]);
        assert!(placement.matches_node(&labels(&[(PRODUCT_LABEL, "Tesla-T4-SHARED")])));
        assert_eq!(placement.describe(), "1 × nvidia.com/gpu on Tesla-T4");
    }

    #[test]
    fn mig_asks_for_the_profile_resource_and_slice_memory() {
        let placement = GpuPlacement::from_spec(&gpu(
            "products: [NVIDIA-H100-80GB-HBM3]\nsharing: mig\nmigProfile: 1g.10gb\nminMemoryMiB: 9000",
        ));
        assert_eq!(placement.resource, "nvidia.com/mig-1g.10gb");
        assert!(
            placement
                .products
                .contains(&"NVIDIA-H100-80GB-HBM3-MIG-1g.10gb".to_owned())
        );
        assert_eq!(
            placement.min_memory,
            Some(("nvidia.com/mig-1g.10gb.memory".into(), 9000))
        );
        let node = labels(&[
            (PRODUCT_LABEL, "NVIDIA-H100-80GB-HBM3-MIG-1g.10gb"),
            ("nvidia.com/mig-1g.10gb.memory", "9856"),
        ]);
        assert!(placement.matches_node(&node));
    }

    #[test]
    fn minimum_memory_becomes_a_strict_gt_requirement() {
        let placement = GpuPlacement::from_spec(&gpu("minMemoryMiB: 40960"));
        let requirements = placement.node_requirements();
        assert_eq!(requirements.len(), 1, "{requirements:?}");
        assert_eq!(requirements[0].key, MEMORY_LABEL);
        assert_eq!(requirements[0].operator, "Gt");
        assert_eq!(requirements[0].values, Some(vec!["40959".to_owned()]));
        assert!(placement.matches_node(&labels(&[(MEMORY_LABEL, "40960")])));
        assert!(!placement.matches_node(&labels(&[(MEMORY_LABEL, "15360")])));
        assert!(
            !placement.matches_node(&labels(&[])),
            "a node without the label is not acceptable"
        );
    }

    #[test]
    fn requirements_are_added_to_every_user_term() {
        let user: Affinity = serde_yaml_ng::from_str(
            "nodeAffinity:\n  requiredDuringSchedulingIgnoredDuringExecution:\n    nodeSelectorTerms:\n    - matchExpressions: [{key: zone, operator: In, values: [a]}]\n    - matchExpressions: [{key: zone, operator: In, values: [b]}]\n",
        )
        .unwrap();
        let gpu_requirement = NodeSelectorRequirement {
            key: PRODUCT_LABEL.into(),
            operator: "In".into(),
            values: Some(vec!["X".into()]),
        };
        let merged = merge_node_requirements(Some(user), vec![gpu_requirement.clone()]).unwrap();
        let terms = merged
            .node_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms;
        assert_eq!(terms.len(), 2);
        for term in terms {
            let expressions = term.match_expressions.unwrap();
            assert_eq!(expressions.len(), 2);
            assert_eq!(expressions[1], gpu_requirement);
        }
    }

    #[test]
    fn no_requirements_leave_affinity_untouched() {
        assert_eq!(merge_node_requirements(None, Vec::new()), None);
    }
}
