//! HorizontalPodAutoscaler `NAME` (autoscaling/v2), when `autoscale` is true.

use k8s_openapi::{
    api::autoscaling::v2::{
        CrossVersionObjectReference, HPAScalingRules, HorizontalPodAutoscaler, HorizontalPodAutoscalerBehavior,
        HorizontalPodAutoscalerSpec, MetricIdentifier, MetricSpec, MetricTarget, PodsMetricSource,
        ResourceMetricSource,
    },
    apimachinery::pkg::api::resource::Quantity,
};

use super::object_meta;
use crate::vocabulary::{
    GPU_UTILIZATION_METRIC, QUEUE_TIME_METRIC, Scaling, ScalingMetric, Validated,
    names::{COMPONENT_SERVER, deployment_name},
};

pub fn build(model: &Validated) -> Option<HorizontalPodAutoscaler> {
    let Scaling::Autoscaled(plan) = &model.scaling else {
        return None;
    };
    let pods_metric = |name: &str| MetricSpec {
        type_: "Pods".to_owned(),
        pods: Some(PodsMetricSource {
            metric: MetricIdentifier {
                name: name.to_owned(),
                selector: None,
            },
            target: MetricTarget {
                type_: "AverageValue".to_owned(),
                average_value: Some(Quantity(plan.target.to_string())),
                ..MetricTarget::default()
            },
        }),
        ..MetricSpec::default()
    };
    let metric = match plan.metric {
        ScalingMetric::GpuUtilization => pods_metric(GPU_UTILIZATION_METRIC),
        ScalingMetric::InferenceQueue => pods_metric(QUEUE_TIME_METRIC),
        ScalingMetric::Cpu => MetricSpec {
            type_: "Resource".to_owned(),
            resource: Some(ResourceMetricSource {
                name: "cpu".to_owned(),
                target: MetricTarget {
                    type_: "Utilization".to_owned(),
                    average_utilization: Some(plan.target),
                    ..MetricTarget::default()
                },
            }),
            ..MetricSpec::default()
        },
    };
    let behavior = plan
        .scale_down_stabilization_seconds
        .map(|seconds| HorizontalPodAutoscalerBehavior {
            scale_down: Some(HPAScalingRules {
                stabilization_window_seconds: Some(seconds),
                ..HPAScalingRules::default()
            }),
            scale_up: None,
        });
    Some(HorizontalPodAutoscaler {
        metadata: object_meta(model, deployment_name(&model.name), COMPONENT_SERVER),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".to_owned()),
                kind: "Deployment".to_owned(),
                name: deployment_name(&model.name),
            },
            // An HPA cannot go below one (`HPAScaleToZero` is alpha and off): going to zero is the
            // idle check's (`crate::reconcile::idle`), and the HPA stands still at zero.
            min_replicas: Some(plan.min_replicas.max(1)),
            max_replicas: plan.max_replicas,
            metrics: Some(vec![metric]),
            behavior,
        }),
        ..HorizontalPodAutoscaler::default()
    })
}
