//! NVML, loaded at run time from `--nvml-lib` exactly as the system library would be, read by one
//! thread on a fixed cadence into the shared snapshot. Each GPU is read on its own: one that fails
//! is skipped and counted while the others still report. A library that cannot be loaded or
//! initialised, or that stops answering, leaves the agent up but not ready, retrying with backoff
//! behind one clear log line.

use std::{
    collections::HashMap,
    ffi::OsString,
    sync::{
        Arc,
        mpsc::{Receiver, RecvTimeoutError},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use nvml_wrapper::{
    Device, Nvml,
    enum_wrappers::device::{Clock, TemperatureSensor},
    error::NvmlError,
};
use tracing::{debug, info, warn};

use crate::{
    snapshot::{AgentState, GpuReading, MigReading, NvmlStatus, Sample},
    telemetry::{AgentMetrics, with_causes},
};

/// Retries of a failed NVML initialisation back off from the sampling interval up to this.
const MAX_RETRY: Duration = Duration::from_secs(30);
const MIB: u64 = 1024 * 1024;

pub struct Sampler {
    pub nvml_lib: OsString,
    pub interval: Duration,
    pub state: Arc<AgentState>,
    pub metrics: AgentMetrics,
}

enum Stopped {
    /// Shutdown was asked for.
    Shutdown,
    /// NVML stopped answering, with the reason.
    Lost(String),
}

impl Sampler {
    /// Samples on its own thread until `stop` receives or its sender is dropped. NVML calls can
    /// block (a GPU falling off the bus), so they stay off the async runtime.
    pub fn spawn(self, stop: Receiver<()>) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("nvml-sampler".into())
            .spawn(move || self.run(&stop))
    }

    fn run(&self, stop: &Receiver<()>) {
        let mut retry = self.interval;
        let mut last_failure: Option<String> = None;
        loop {
            match Nvml::builder().lib_path(&self.nvml_lib).init() {
                Ok(nvml) => {
                    retry = self.interval;
                    last_failure = None;
                    info!(
                        library = %self.nvml_lib.to_string_lossy(),
                        driver = nvml.sys_driver_version().unwrap_or_default(),
                        gpus = nvml.device_count().unwrap_or_default(),
                        "NVML initialised"
                    );
                    self.state.set_nvml_status(NvmlStatus::Up);
                    self.metrics.nvml_up.set(1);
                    let stopped = self.sample_until_stopped(&nvml, stop);
                    self.metrics.nvml_up.set(0);
                    self.metrics.gpus.set(0);
                    match stopped {
                        Stopped::Shutdown => return,
                        Stopped::Lost(reason) => {
                            warn!(error = %reason, "NVML stopped answering: GPU metrics are withdrawn and /readyz reports not ready until it initialises again");
                            self.state.set_nvml_status(NvmlStatus::Unavailable(reason));
                        }
                    }
                    // Dropping `nvml` calls nvmlShutdown before the next attempt loads it afresh.
                }
                Err(error) => {
                    self.metrics.nvml_init_errors.inc();
                    let reason = describe(&error);
                    if last_failure.as_ref() != Some(&reason) {
                        warn!(
                            library = %self.nvml_lib.to_string_lossy(),
                            error = %reason,
                            "NVML unavailable: no GPU metrics and /readyz reports not ready; retrying with backoff up to {}s",
                            MAX_RETRY.as_secs()
                        );
                    } else {
                        debug!(error = %reason, "NVML still unavailable");
                    }
                    self.state.set_nvml_status(NvmlStatus::Unavailable(reason.clone()));
                    last_failure = Some(reason);
                }
            }
            if wait(stop, retry) {
                return;
            }
            retry = (retry * 2).min(MAX_RETRY);
        }
    }

    fn sample_until_stopped(&self, nvml: &Nvml, stop: &Receiver<()>) -> Stopped {
        // The last error of each GPU that fails, so that a GPU failing every pass logs once.
        let mut failing: HashMap<u32, String> = HashMap::new();
        let mut next = Instant::now();
        loop {
            let started = Instant::now();
            let count = match nvml.device_count() {
                Ok(count) => count,
                Err(error) => return Stopped::Lost(describe(&error)),
            };
            let mut gpus = Vec::with_capacity(count as usize);
            for index in 0..count {
                match read_gpu(nvml, index) {
                    Ok(gpu) => {
                        if failing.remove(&index).is_some() {
                            info!(gpu = index, uuid = %gpu.uuid, "GPU reads again");
                        }
                        gpus.push(gpu);
                    }
                    Err(error) => {
                        self.metrics
                            .device_read_errors
                            .with_label_values(&[index.to_string()])
                            .inc();
                        let reason = describe(&error);
                        if failing.get(&index) != Some(&reason) {
                            warn!(gpu = index, error = %reason, "skipping a GPU that NVML failed to read");
                            failing.insert(index, reason);
                        }
                    }
                }
            }
            self.metrics.gpus.set(gpus.len() as i64);
            self.metrics.samples.inc();
            self.metrics.sample_duration.set(started.elapsed().as_secs_f64());
            self.state.publish_sample(Sample {
                gpus,
                taken_at: SystemTime::now(),
                taken: Instant::now(),
            });

            // A fixed cadence; a pass that overran skips the ticks it missed.
            next += self.interval;
            let now = Instant::now();
            if next < now {
                next = now + self.interval;
            }
            if wait(stop, next - now) {
                return Stopped::Shutdown;
            }
        }
    }
}

/// Sleeps for `duration`; true when asked to stop.
fn wait(stop: &Receiver<()>, duration: Duration) -> bool {
    !matches!(stop.recv_timeout(duration), Err(RecvTimeoutError::Timeout))
}

/// One GPU, each reading through nvml-wrapper (`nvmlDeviceGetMemoryInfo_v2` for memory).
fn read_gpu(nvml: &Nvml, index: u32) -> Result<GpuReading, NvmlError> {
    let device = nvml.device_by_index(index)?;
    let uuid = device.uuid()?;
    let name = device.name()?;
    let utilization = supported(device.utilization_rates())?;
    let memory = supported(device.memory_info())?;
    let power_mw = supported(device.power_usage())?;
    let temperature_c = supported(device.temperature(TemperatureSensor::Gpu))?;
    let sm_clock_mhz = supported(device.clock_info(Clock::SM))?;
    let mig_devices = read_mig_devices(&device)?;
    Ok(GpuReading {
        index,
        uuid,
        name,
        utilization_gpu: utilization.as_ref().map(|u| u.gpu),
        utilization_memory: utilization.as_ref().map(|u| u.memory),
        fb_used_mib: memory.as_ref().map(|m| m.used / MIB),
        fb_free_mib: memory.as_ref().map(|m| m.free / MIB),
        power_watts: power_mw.map(|mw| f64::from(mw) / 1000.0),
        temperature_c,
        sm_clock_mhz,
        mig_devices,
        read_at: SystemTime::now(),
    })
}

/// The MIG devices of a GPU in MIG mode; none for a GPU that is not or cannot be.
fn read_mig_devices(device: &Device) -> Result<Vec<MigReading>, NvmlError> {
    let Some(mode) = supported(device.mig_mode())? else {
        return Ok(Vec::new());
    };
    if mode.current != 1 {
        return Ok(Vec::new());
    }
    let slots = device.mig_device_count()?;
    let mut migs = Vec::new();
    for slot in 0..slots {
        let mig = match device.mig_device_by_index(slot) {
            Ok(mig) => mig,
            // An empty slot: no GPU instance there.
            Err(NvmlError::NotFound | NvmlError::InvalidArg) => continue,
            Err(error) => return Err(error),
        };
        let memory = supported(mig.memory_info())?;
        migs.push(MigReading {
            uuid: mig.uuid()?,
            profile: mig_profile(&mig.name()?).map(str::to_owned),
            fb_used_mib: memory.as_ref().map(|m| m.used / MIB),
            fb_free_mib: memory.as_ref().map(|m| m.free / MIB),
        });
    }
    Ok(migs)
}

/// A reading the GPU or the driver's library does not offer is absent, not an error.
fn supported<T>(result: Result<T, NvmlError>) -> Result<Option<T>, NvmlError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(NvmlError::NotSupported | NvmlError::FailedToLoadSymbol(_)) => Ok(None),
        Err(error) => Err(error),
    }
}

/// `NVIDIA A100-SXM4-80GB MIG 1g.10gb` → `1g.10gb`.
fn mig_profile(name: &str) -> Option<&str> {
    name.rsplit_once(" MIG ")
        .map(|(_, profile)| profile.trim())
        .filter(|p| !p.is_empty())
}

fn describe(error: &NvmlError) -> String {
    with_causes(error.to_string(), error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mig_profiles_come_from_the_device_name() {
        assert_eq!(mig_profile("NVIDIA A100-SXM4-80GB MIG 1g.10gb"), Some("1g.10gb"));
        assert_eq!(mig_profile("NVIDIA H100 80GB HBM3 MIG 3g.40gb"), Some("3g.40gb"));
        assert_eq!(mig_profile("NVIDIA A100-SXM4-80GB"), None);
        assert_eq!(mig_profile("NVIDIA A100 MIG "), None);
    }

    #[test]
    fn unsupported_readings_are_absent_and_real_errors_stay_errors() {
        assert!(matches!(supported::<u32>(Err(NvmlError::NotSupported)), Ok(None)));
        assert!(matches!(
            supported::<u32>(Err(NvmlError::FailedToLoadSymbol("x".into()))),
            Ok(None)
        ));
        assert!(matches!(
            supported::<u32>(Err(NvmlError::GpuLost)),
            Err(NvmlError::GpuLost)
        ));
        assert!(matches!(supported(Ok(3)), Ok(Some(3))));
    }
}
