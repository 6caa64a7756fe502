//! The GPU families of `/metrics`, in Prometheus text format, with dcgm-exporter's names, units
//! and labels so that its dashboards and adapter rules keep working: one series per GPU and
//! container holding it (a time-sliced GPU has one per sharing container), or one with empty
//! `namespace`, `pod` and `container` when no container holds it.
//!
//! Written by hand rather than through the `prometheus` crate: a scrape renders the latest
//! snapshot straight into the response text with no per-series allocation. At 8 GPUs and 50 pods
//! (350 series), filling `GaugeVec`s from the snapshot and encoding them measured about 18 times
//! the CPU of this, some 1.9 ms a scrape against a 1 ms budget; this takes about 0.1 ms
//! (`make bench`). The agent's own few metrics do use a `prometheus::Registry`.
//!
//! MIG devices get their own `DCGM_FI_DEV_FB_USED` / `DCGM_FI_DEV_FB_FREE` series, labelled with
//! the parent GPU plus `GPU_I_PROFILE` and `MIG_UUID` (dcgm-exporter's `GPU_I_ID` needs an NVML
//! call that nvml-wrapper does not expose, and the MIG UUID is what the kubelet names anyway).
//! NVML reports no utilisation, power, temperature or clock per MIG device.
//!
//! A series of a device held through a ResourceClaim (DRA) carries dcgm-exporter's labels for
//! it (`--kubernetes-enable-dra`, its `internal/pkg/transformation/const.go`): `dra_claim_name`,
//! `dra_claim_namespace`, `dra_driver_name`, `dra_pool_name`, `dra_device_name`, and for a MIG
//! device `dra_mig_profile` and `dra_mig_device_uuid`; other series have none of them.

use std::fmt::Write;

use crate::{
    attribution::{Attribution, ClaimHold, Holder},
    snapshot::{GpuReading, MigReading, Sample, SliceDevice},
};

/// A number as Prometheus reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Value {
    Int(u64),
    Float(f64),
}

struct Family {
    name: &'static str,
    help: &'static str,
    gpu: fn(&GpuReading) -> Option<Value>,
    mig: Option<fn(&MigReading) -> Option<Value>>,
}

fn int<T: Into<u64>>(value: Option<T>) -> Option<Value> {
    value.map(|v| Value::Int(v.into()))
}

const FAMILIES: [Family; 7] = [
    Family {
        name: "DCGM_FI_DEV_SM_CLOCK",
        help: "SM clock frequency (in MHz).",
        gpu: |g| int(g.sm_clock_mhz),
        mig: None,
    },
    Family {
        name: "DCGM_FI_DEV_GPU_TEMP",
        help: "GPU temperature (in C).",
        gpu: |g| int(g.temperature_c),
        mig: None,
    },
    Family {
        name: "DCGM_FI_DEV_POWER_USAGE",
        help: "Power draw (in W).",
        gpu: |g| g.power_watts.map(Value::Float),
        mig: None,
    },
    Family {
        name: "DCGM_FI_DEV_GPU_UTIL",
        help: "GPU utilization (in %).",
        gpu: |g| int(g.utilization_gpu),
        mig: None,
    },
    Family {
        name: "DCGM_FI_DEV_MEM_COPY_UTIL",
        help: "Memory utilization (in %).",
        gpu: |g| int(g.utilization_memory),
        mig: None,
    },
    Family {
        name: "DCGM_FI_DEV_FB_FREE",
        help: "Framebuffer memory free (in MiB).",
        gpu: |g| int(g.fb_free_mib),
        mig: Some(|m| int(m.fb_free_mib)),
    },
    Family {
        name: "DCGM_FI_DEV_FB_USED",
        help: "Framebuffer memory used (in MiB).",
        gpu: |g| int(g.fb_used_mib),
        mig: Some(|m| int(m.fb_used_mib)),
    },
];

/// Appends every GPU family of the sample to `out`; `attribution` comes from the same sample.
pub fn encode(out: &mut String, hostname: &str, sample: &Sample, attribution: &Attribution) {
    for family in &FAMILIES {
        let mut header_written = false;
        for (g, gpu) in sample.gpus.iter().enumerate() {
            let whole = (family.gpu)(gpu).map(|value| (None, &attribution.gpus[g], value));
            let migs = gpu.mig_devices.iter().enumerate().filter_map(|(m, mig)| {
                let value = family.mig.and_then(|read| read(mig))?;
                Some((Some(mig), &attribution.mig_devices[g][m], value))
            });
            for (mig, holders, value) in whole.into_iter().chain(migs) {
                if !header_written {
                    let _ = write!(
                        out,
                        "# HELP {} {}\n# TYPE {} gauge\n",
                        family.name, family.help, family.name
                    );
                    header_written = true;
                }
                let series = Series {
                    family: family.name,
                    hostname,
                    gpu,
                    mig,
                };
                if holders.is_empty() {
                    series.write(out, None, value);
                }
                for holder in holders {
                    series.write(out, Some(holder), value);
                }
            }
        }
    }
}

struct Series<'a> {
    family: &'static str,
    hostname: &'a str,
    gpu: &'a GpuReading,
    mig: Option<&'a MigReading>,
}

impl Series<'_> {
    fn write(&self, out: &mut String, holder: Option<&Holder>, value: Value) {
        let _ = write!(out, "{}{{gpu=\"{}\",UUID=\"", self.family, self.gpu.index);
        escape_into(out, &self.gpu.uuid);
        out.push_str("\",modelName=\"");
        escape_into(out, &self.gpu.name);
        if let Some(mig) = self.mig {
            out.push_str("\",GPU_I_PROFILE=\"");
            escape_into(out, mig.profile.as_deref().unwrap_or(""));
            out.push_str("\",MIG_UUID=\"");
            escape_into(out, &mig.uuid);
        }
        out.push_str("\",Hostname=\"");
        escape_into(out, self.hostname);
        let (namespace, pod, container) = holder.map_or(("", "", ""), |h| (h.namespace, h.pod, h.container));
        out.push_str("\",container=\"");
        escape_into(out, container);
        if let Some(claimed) = holder.and_then(|h| h.claimed) {
            write_claim_labels(out, claimed);
        }
        out.push_str("\",namespace=\"");
        escape_into(out, namespace);
        out.push_str("\",pod=\"");
        escape_into(out, pod);
        let _ = match value {
            Value::Int(v) => writeln!(out, "\"}} {v}"),
            Value::Float(v) => writeln!(out, "\"}} {v}"),
        };
    }
}

/// In dcgm-exporter's (alphabetical) order, between `container` and `namespace`.
fn write_claim_labels(out: &mut String, ClaimHold { claim, device }: ClaimHold) {
    out.push_str("\",dra_claim_name=\"");
    escape_into(out, &claim.name);
    out.push_str("\",dra_claim_namespace=\"");
    escape_into(out, &claim.namespace);
    out.push_str("\",dra_device_name=\"");
    escape_into(out, &device.device);
    out.push_str("\",dra_driver_name=\"");
    escape_into(out, &device.driver);
    if let Some(SliceDevice::Mig { uuid, profile, .. }) = &device.slice {
        out.push_str("\",dra_mig_device_uuid=\"");
        escape_into(out, uuid);
        out.push_str("\",dra_mig_profile=\"");
        escape_into(out, profile.as_deref().unwrap_or(""));
    }
    out.push_str("\",dra_pool_name=\"");
    escape_into(out, &device.pool);
}

/// Label values escape `\`, `"` and newlines (Prometheus text format 0.0.4).
fn escape_into(out: &mut String, value: &str) {
    if !value.contains(['\\', '"', '\n']) {
        out.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::{
        attribute,
        tests::{allocation, claim_allocation, claimed, mig_of, reading, sample, whole},
    };

    fn render(sample: &Sample, allocations: &[crate::snapshot::ContainerAllocation]) -> String {
        let mut out = String::new();
        encode(&mut out, "gpu-node-1", sample, &attribute(Some(sample), allocations));
        out
    }

    #[test]
    fn one_series_per_holder_and_unlabelled_when_free() {
        let sample = sample();
        let allocations = [
            allocation("shared-1", "nvidia.com/gpu.shared", &["GPU-b::1"]),
            allocation("shared-2", "nvidia.com/gpu.shared", &["GPU-b::2"]),
            allocation("sliced", "nvidia.com/mig-1g.10gb", &["MIG-c2"]),
        ];
        let text = render(&sample, &allocations);
        let util: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("DCGM_FI_DEV_GPU_UTIL{"))
            .collect();
        assert_eq!(
            util,
            [
                r#"DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-a",modelName="NVIDIA A100-SXM4-80GB",Hostname="gpu-node-1",container="",namespace="",pod=""} 0"#,
                r#"DCGM_FI_DEV_GPU_UTIL{gpu="1",UUID="GPU-b",modelName="NVIDIA A100-SXM4-80GB",Hostname="gpu-node-1",container="main",namespace="ml",pod="shared-1"} 10"#,
                r#"DCGM_FI_DEV_GPU_UTIL{gpu="1",UUID="GPU-b",modelName="NVIDIA A100-SXM4-80GB",Hostname="gpu-node-1",container="main",namespace="ml",pod="shared-2"} 10"#,
            ],
            "{text}"
        );
        let fb_used: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("DCGM_FI_DEV_FB_USED{gpu=\"2\""))
            .collect();
        assert_eq!(
            fb_used,
            [
                r#"DCGM_FI_DEV_FB_USED{gpu="2",UUID="GPU-c",modelName="NVIDIA A100-SXM4-80GB",Hostname="gpu-node-1",container="",namespace="",pod=""} 1000"#,
                r#"DCGM_FI_DEV_FB_USED{gpu="2",UUID="GPU-c",modelName="NVIDIA A100-SXM4-80GB",GPU_I_PROFILE="1g.10gb",MIG_UUID="MIG-c1",Hostname="gpu-node-1",container="",namespace="",pod=""} 10"#,
                r#"DCGM_FI_DEV_FB_USED{gpu="2",UUID="GPU-c",modelName="NVIDIA A100-SXM4-80GB",GPU_I_PROFILE="1g.10gb",MIG_UUID="MIG-c2",Hostname="gpu-node-1",container="main",namespace="ml",pod="sliced"} 10"#,
            ],
            "{text}"
        );
    }

    #[test]
    fn claimed_devices_carry_dcgm_exporters_dra_labels() {
        let sample = sample();
        let allocations = [
            claim_allocation("dra", vec![claimed("gpu-1", whole("GPU-b"))]),
            claim_allocation("dra-mig", vec![claimed("gpu-2-mig-0", mig_of("GPU-c", "MIG-c1"))]),
        ];
        let text = render(&sample, &allocations);
        let util: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("DCGM_FI_DEV_GPU_UTIL{gpu=\"1\""))
            .collect();
        assert_eq!(
            util,
            [
                r#"DCGM_FI_DEV_GPU_UTIL{gpu="1",UUID="GPU-b",modelName="NVIDIA A100-SXM4-80GB",Hostname="gpu-node-1",container="main",dra_claim_name="dra-gpu",dra_claim_namespace="ml",dra_device_name="gpu-1",dra_driver_name="gpu.nvidia.com",dra_pool_name="node-1",namespace="ml",pod="dra"} 10"#
            ],
            "{text}"
        );
        assert!(
            text.lines().any(|l| l
                == r#"DCGM_FI_DEV_FB_USED{gpu="2",UUID="GPU-c",modelName="NVIDIA A100-SXM4-80GB",GPU_I_PROFILE="1g.10gb",MIG_UUID="MIG-c1",Hostname="gpu-node-1",container="main",dra_claim_name="dra-mig-gpu",dra_claim_namespace="ml",dra_device_name="gpu-2-mig-0",dra_driver_name="gpu.nvidia.com",dra_mig_device_uuid="MIG-c1",dra_mig_profile="1g.10gb",dra_pool_name="node-1",namespace="ml",pod="dra-mig"} 10"#),
            "{text}"
        );
        // The GPU nobody claimed keeps the plain labels.
        assert!(
            text.contains(r#"DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-a",modelName="NVIDIA A100-SXM4-80GB",Hostname="gpu-node-1",container="",namespace="",pod=""} 0"#),
            "{text}"
        );
    }

    #[test]
    fn every_family_has_help_and_type_once_and_units_match_dcgm() {
        let text = render(&sample(), &[]);
        for family in FAMILIES {
            assert_eq!(
                text.matches(&format!("# TYPE {} gauge\n", family.name)).count(),
                1,
                "{text}"
            );
            assert_eq!(text.matches(&format!("# HELP {} ", family.name)).count(), 1, "{text}");
        }
        assert!(
            text.contains(r#"DCGM_FI_DEV_POWER_USAGE{gpu="0",UUID="GPU-a","#),
            "{text}"
        );
        assert!(text.contains(r#"pod=""} 61.5"#), "{text}");
        assert!(text.contains(r#"DCGM_FI_DEV_SM_CLOCK{gpu="1",UUID="GPU-b",modelName="NVIDIA A100-SXM4-80GB",Hostname="gpu-node-1",container="",namespace="",pod=""} 1410"#), "{text}");
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn unsupported_readings_are_left_out_not_zero() {
        let mut gpu = reading(0, "GPU-a");
        gpu.power_watts = None;
        let sample = Sample {
            gpus: vec![gpu],
            ..sample()
        };
        let text = render(&sample, &[]);
        assert!(!text.contains("DCGM_FI_DEV_POWER_USAGE"), "{text}");
        assert!(text.contains("DCGM_FI_DEV_GPU_TEMP{"), "{text}");
    }

    #[test]
    fn no_gpus_no_families() {
        let sample = Sample {
            gpus: vec![],
            ..sample()
        };
        assert_eq!(render(&sample, &[]), "");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        escape_into(&mut out, "a\"b\\c\nd");
        assert_eq!(out, r#"a\"b\\c\nd"#);
    }
}
