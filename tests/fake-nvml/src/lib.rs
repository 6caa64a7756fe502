//! A stand-in `libnvidia-ml.so`: the NVML C ABI the node agent calls (through nvml-wrapper), with
//! nvml.h's struct layouts and return codes, answering from a JSON file named by `FAKE_NVML_CONFIG`.
//! The file is read again whenever its modification time or size changes, so a test (or a demo)
//! changes utilisation live by rewriting it; write it to a temporary name and rename it over, so
//! that no call ever reads half a file.
//!
//! ```json
//! {
//!   "driverVersion": "550.54.15",
//!   "initError": null,
//!   "devices": [
//!     {"uuid": "GPU-…", "name": "NVIDIA A100-SXM4-80GB", "utilizationGpu": 87, "utilizationMemory": 40,
//!      "memoryTotalMiB": 81920, "memoryUsedMiB": 40960, "powerMilliwatts": 275000,
//!      "temperatureC": 61, "smClockMHz": 1410},
//!     {"uuid": "GPU-…", "fail": "gpuIsLost"},
//!     {"uuid": "GPU-…", "unsupported": ["power"],
//!      "migDevices": [{"uuid": "MIG-…", "name": "NVIDIA A100-SXM4-80GB MIG 1g.10gb",
//!                      "memoryTotalMiB": 9984, "memoryUsedMiB": 512}]}
//!   ]
//! }
//! ```
//!
//! - `initError` (an NVML error name, below) makes `nvmlInit_v2` fail; so does a missing file.
//! - `fail` makes every call on that device but `nvmlDeviceGetHandleByIndex_v2` return the error.
//! - `unsupported` lists readings answered with `NVML_ERROR_NOT_SUPPORTED`: `utilization`,
//!   `memory`, `power`, `temperature`, `clocks`.
//! - A device with `migDevices` is in MIG mode: its utilisation is not supported, as on real GPUs,
//!   and each MIG device is a handle of its own with a UUID, name and memory.
//!
//! Error names: `uninitialized`, `invalidArgument`, `notSupported`, `noPermission`, `notFound`,
//! `driverNotLoaded`, `timeout`, `gpuIsLost`, `unknown`.

// These functions are NVML's C entry points; their safety contracts are nvml.h's.
#![allow(clippy::missing_safety_doc)]

use std::{
    ffi::{CStr, c_char, c_uint, c_ulonglong, c_void},
    os::unix::fs::MetadataExt,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::SystemTime,
};

use serde::Deserialize;

type NvmlReturn = c_uint;
type NvmlDevice = *mut c_void;

const SUCCESS: NvmlReturn = 0;
const ERROR_UNINITIALIZED: NvmlReturn = 1;
const ERROR_INVALID_ARGUMENT: NvmlReturn = 2;
const ERROR_NOT_SUPPORTED: NvmlReturn = 3;
const ERROR_NO_PERMISSION: NvmlReturn = 4;
const ERROR_NOT_FOUND: NvmlReturn = 6;
const ERROR_INSUFFICIENT_SIZE: NvmlReturn = 7;
const ERROR_DRIVER_NOT_LOADED: NvmlReturn = 9;
const ERROR_TIMEOUT: NvmlReturn = 10;
const ERROR_GPU_IS_LOST: NvmlReturn = 15;
const ERROR_ARGUMENT_VERSION_MISMATCH: NvmlReturn = 25;
const ERROR_UNKNOWN: NvmlReturn = 999;

const MIB: u64 = 1024 * 1024;
const TEMPERATURE_GPU: c_uint = 0;
const CLOCK_GRAPHICS: c_uint = 0;
const CLOCK_SM: c_uint = 1;
const CLOCK_MEM: c_uint = 2;
const CLOCK_VIDEO: c_uint = 3;
const DEVICE_MIG_ENABLE: c_uint = 1;
/// nvml.h: `NVML_STRUCT_VERSION(Memory, 2)`, the size of `nvmlMemory_v2_t` with the version in the top byte.
const MEMORY_V2_VERSION: c_uint = (std::mem::size_of::<MemoryV2>() as c_uint) | (2 << 24);

#[repr(C)]
pub struct Utilization {
    gpu: c_uint,
    memory: c_uint,
}

#[repr(C)]
pub struct MemoryV1 {
    total: c_ulonglong,
    free: c_ulonglong,
    used: c_ulonglong,
}

#[repr(C)]
pub struct MemoryV2 {
    version: c_uint,
    total: c_ulonglong,
    reserved: c_ulonglong,
    free: c_ulonglong,
    used: c_ulonglong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
enum NvmlError {
    Uninitialized,
    InvalidArgument,
    NotSupported,
    NoPermission,
    NotFound,
    DriverNotLoaded,
    Timeout,
    GpuIsLost,
    Unknown,
}

impl NvmlError {
    fn code(self) -> NvmlReturn {
        match self {
            NvmlError::Uninitialized => ERROR_UNINITIALIZED,
            NvmlError::InvalidArgument => ERROR_INVALID_ARGUMENT,
            NvmlError::NotSupported => ERROR_NOT_SUPPORTED,
            NvmlError::NoPermission => ERROR_NO_PERMISSION,
            NvmlError::NotFound => ERROR_NOT_FOUND,
            NvmlError::DriverNotLoaded => ERROR_DRIVER_NOT_LOADED,
            NvmlError::Timeout => ERROR_TIMEOUT,
            NvmlError::GpuIsLost => ERROR_GPU_IS_LOST,
            NvmlError::Unknown => ERROR_UNKNOWN,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
enum Reading {
    Utilization,
    Memory,
    Power,
    Temperature,
    Clocks,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Config {
    #[serde(default = "default_driver_version")]
    driver_version: String,
    #[serde(default)]
    init_error: Option<NvmlError>,
    #[serde(default)]
    devices: Vec<DeviceConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DeviceConfig {
    uuid: String,
    #[serde(default = "default_name")]
    name: String,
    #[serde(default)]
    utilization_gpu: u32,
    #[serde(default)]
    utilization_memory: u32,
    #[serde(default = "default_memory_total", rename = "memoryTotalMiB")]
    memory_total_mib: u64,
    #[serde(default, rename = "memoryUsedMiB")]
    memory_used_mib: u64,
    #[serde(default = "default_power")]
    power_milliwatts: u32,
    #[serde(default = "default_temperature", rename = "temperatureC")]
    temperature_c: u32,
    #[serde(default = "default_sm_clock", rename = "smClockMHz")]
    sm_clock_mhz: u32,
    #[serde(default)]
    fail: Option<NvmlError>,
    #[serde(default)]
    unsupported: Vec<Reading>,
    #[serde(default)]
    mig_devices: Vec<MigConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MigConfig {
    uuid: String,
    #[serde(default = "default_mig_name")]
    name: String,
    #[serde(default = "default_mig_memory", rename = "memoryTotalMiB")]
    memory_total_mib: u64,
    #[serde(default, rename = "memoryUsedMiB")]
    memory_used_mib: u64,
}

fn default_driver_version() -> String {
    "550.54.15".into()
}
fn default_name() -> String {
    "NVIDIA A100-SXM4-80GB".into()
}
fn default_mig_name() -> String {
    "NVIDIA A100-SXM4-80GB MIG 1g.10gb".into()
}
fn default_memory_total() -> u64 {
    81920
}
fn default_mig_memory() -> u64 {
    9984
}
fn default_power() -> u32 {
    60000
}
fn default_temperature() -> u32 {
    35
}
fn default_sm_clock() -> u32 {
    1410
}

/// What tells one version of the file from the next: a rename brings a new inode, and the
/// modification time alone can repeat within the kernel's timestamp granularity.
type Stamp = (SystemTime, u64, u64);

/// The parsed file and what identified its version on disk.
struct Loaded {
    stamp: Stamp,
    config: Arc<Config>,
}

static LOADED: Mutex<Option<Loaded>> = Mutex::new(None);
/// nvmlInit/nvmlShutdown nest: calls work while the count is above zero.
static INIT_COUNT: AtomicU32 = AtomicU32::new(0);

/// The configuration as the file now reads; the previous one while the file is unreadable or
/// half-written; `None` when there never was one.
fn config() -> Option<Arc<Config>> {
    let path = PathBuf::from(std::env::var_os("FAKE_NVML_CONFIG")?);
    let mut loaded = LOADED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let stamp = std::fs::metadata(&path)
        .ok()
        .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), m.ino()));
    let fresh = matches!((&*loaded, stamp), (Some(l), Some(s)) if l.stamp == s);
    if !fresh && let Some(stamp) = stamp {
        match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| serde_json::from_slice::<Config>(&bytes).map_err(|e| e.to_string()))
        {
            Ok(config) => {
                *loaded = Some(Loaded {
                    stamp,
                    config: Arc::new(config),
                });
            }
            Err(error) => eprintln!("fake-nvml: ignoring {}: {error}", path.display()),
        }
    }
    loaded.as_ref().map(|l| l.config.clone())
}

/// The configuration, once initialised.
fn initialised() -> Result<Arc<Config>, NvmlReturn> {
    if INIT_COUNT.load(Ordering::SeqCst) == 0 {
        return Err(ERROR_UNINITIALIZED);
    }
    config().ok_or(ERROR_UNINITIALIZED)
}

/// Handles encode indices: GPU `i` is `(i + 1) << 8`, its MIG device `j` adds `j + 1`.
fn gpu_handle(index: usize) -> NvmlDevice {
    ((index + 1) << 8) as NvmlDevice
}

fn mig_handle(gpu: usize, mig: usize) -> NvmlDevice {
    (((gpu + 1) << 8) | (mig + 1)) as NvmlDevice
}

enum Target<'a> {
    Gpu(&'a DeviceConfig),
    Mig(&'a MigConfig),
}

/// What a handle names, or the error a call on it returns.
fn resolve<'a>(config: &'a Config, device: NvmlDevice) -> Result<Target<'a>, NvmlReturn> {
    let raw = device as usize;
    let gpu = (raw >> 8).checked_sub(1).ok_or(ERROR_INVALID_ARGUMENT)?;
    let gpu = config.devices.get(gpu).ok_or(ERROR_INVALID_ARGUMENT)?;
    if let Some(error) = gpu.fail {
        return Err(error.code());
    }
    match (raw & 0xff).checked_sub(1) {
        None => Ok(Target::Gpu(gpu)),
        Some(mig) => Ok(Target::Mig(gpu.mig_devices.get(mig).ok_or(ERROR_INVALID_ARGUMENT)?)),
    }
}

/// Runs `answer` on the device a handle names, once initialised.
fn with_device(device: NvmlDevice, answer: impl FnOnce(Target) -> NvmlReturn) -> NvmlReturn {
    match initialised().and_then(|config| resolve(&config, device).map(answer)) {
        Ok(code) | Err(code) => code,
    }
}

fn supported(device: &DeviceConfig, reading: Reading) -> bool {
    !device.unsupported.contains(&reading)
}

unsafe fn put<T>(out: *mut T, value: T) -> NvmlReturn {
    if out.is_null() {
        return ERROR_INVALID_ARGUMENT;
    }
    unsafe { out.write(value) };
    SUCCESS
}

/// Copies a NUL-terminated string into a caller's buffer of `length` bytes.
unsafe fn put_str(out: *mut c_char, length: c_uint, value: &str) -> NvmlReturn {
    if out.is_null() {
        return ERROR_INVALID_ARGUMENT;
    }
    if value.len() + 1 > length as usize {
        return ERROR_INSUFFICIENT_SIZE;
    }
    unsafe {
        std::ptr::copy_nonoverlapping(value.as_ptr().cast::<c_char>(), out, value.len());
        out.add(value.len()).write(0);
    }
    SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlInit_v2() -> NvmlReturn {
    match config() {
        None => ERROR_DRIVER_NOT_LOADED,
        Some(config) => match config.init_error {
            Some(error) => error.code(),
            None => {
                INIT_COUNT.fetch_add(1, Ordering::SeqCst);
                SUCCESS
            }
        },
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlInitWithFlags(_flags: c_uint) -> NvmlReturn {
    nvmlInit_v2()
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlShutdown() -> NvmlReturn {
    match INIT_COUNT.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)) {
        Ok(_) => SUCCESS,
        Err(_) => ERROR_UNINITIALIZED,
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlErrorString(result: NvmlReturn) -> *const c_char {
    let text: &'static CStr = match result {
        SUCCESS => c"Success",
        ERROR_UNINITIALIZED => c"Uninitialized",
        ERROR_INVALID_ARGUMENT => c"Invalid Argument",
        ERROR_NOT_SUPPORTED => c"Not Supported",
        ERROR_NO_PERMISSION => c"Insufficient Permissions",
        ERROR_NOT_FOUND => c"Not Found",
        ERROR_INSUFFICIENT_SIZE => c"Insufficient Size",
        ERROR_DRIVER_NOT_LOADED => c"Driver Not Loaded",
        ERROR_TIMEOUT => c"Timeout",
        ERROR_GPU_IS_LOST => c"GPU is lost",
        ERROR_ARGUMENT_VERSION_MISMATCH => c"Argument version mismatch",
        _ => c"Unknown Error",
    };
    text.as_ptr()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(version: *mut c_char, length: c_uint) -> NvmlReturn {
    match initialised() {
        Ok(config) => unsafe { put_str(version, length, &config.driver_version) },
        Err(code) => code,
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetNVMLVersion(version: *mut c_char, length: c_uint) -> NvmlReturn {
    match initialised() {
        Ok(config) => {
            let major = config.driver_version.split('.').next().unwrap_or("550");
            unsafe { put_str(version, length, &format!("12.{major}.0")) }
        }
        Err(code) => code,
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(count: *mut c_uint) -> NvmlReturn {
    match initialised() {
        Ok(config) => unsafe { put(count, config.devices.len() as c_uint) },
        Err(code) => code,
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(index: c_uint, device: *mut NvmlDevice) -> NvmlReturn {
    match initialised() {
        Ok(config) if (index as usize) < config.devices.len() => unsafe { put(device, gpu_handle(index as usize)) },
        Ok(_) => ERROR_INVALID_ARGUMENT,
        Err(code) => code,
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetIndex(device: NvmlDevice, index: *mut c_uint) -> NvmlReturn {
    let gpu = ((device as usize) >> 8).wrapping_sub(1);
    with_device(device, |_| unsafe { put(index, gpu as c_uint) })
}

/// Copies the UUID or name of the device a handle names into the caller's buffer.
unsafe fn device_str(
    device: NvmlDevice,
    out: *mut c_char,
    length: c_uint,
    pick: for<'a> fn(&Target<'a>) -> &'a str,
) -> NvmlReturn {
    with_device(device, |target| unsafe { put_str(out, length, pick(&target)) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUUID(device: NvmlDevice, uuid: *mut c_char, length: c_uint) -> NvmlReturn {
    unsafe {
        device_str(device, uuid, length, |target| match target {
            Target::Gpu(gpu) => &gpu.uuid,
            Target::Mig(mig) => &mig.uuid,
        })
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetName(device: NvmlDevice, name: *mut c_char, length: c_uint) -> NvmlReturn {
    unsafe {
        device_str(device, name, length, |target| match target {
            Target::Gpu(gpu) => &gpu.name,
            Target::Mig(mig) => &mig.name,
        })
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUtilizationRates(
    device: NvmlDevice,
    utilization: *mut Utilization,
) -> NvmlReturn {
    with_device(device, |target| match target {
        Target::Gpu(gpu) if gpu.mig_devices.is_empty() && supported(gpu, Reading::Utilization) => unsafe {
            put(
                utilization,
                Utilization {
                    gpu: gpu.utilization_gpu,
                    memory: gpu.utilization_memory,
                },
            )
        },
        _ => ERROR_NOT_SUPPORTED,
    })
}

/// Total and used memory of a device in bytes, or `None` when it does not report memory.
fn memory(target: &Target) -> Option<(u64, u64)> {
    match target {
        Target::Gpu(gpu) if supported(gpu, Reading::Memory) => {
            Some((gpu.memory_total_mib * MIB, gpu.memory_used_mib * MIB))
        }
        Target::Gpu(_) => None,
        Target::Mig(mig) => Some((mig.memory_total_mib * MIB, mig.memory_used_mib * MIB)),
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo(device: NvmlDevice, out: *mut MemoryV1) -> NvmlReturn {
    with_device(device, |target| match memory(&target) {
        Some((total, used)) => unsafe {
            put(
                out,
                MemoryV1 {
                    total,
                    free: total.saturating_sub(used),
                    used,
                },
            )
        },
        None => ERROR_NOT_SUPPORTED,
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(device: NvmlDevice, out: *mut MemoryV2) -> NvmlReturn {
    if out.is_null() {
        return ERROR_INVALID_ARGUMENT;
    }
    // Like NVML, refuse a caller that did not stamp the struct version it passes.
    if unsafe { (*out).version } != MEMORY_V2_VERSION {
        return ERROR_ARGUMENT_VERSION_MISMATCH;
    }
    with_device(device, |target| match memory(&target) {
        Some((total, used)) => unsafe {
            put(
                out,
                MemoryV2 {
                    version: MEMORY_V2_VERSION,
                    total,
                    reserved: 0,
                    free: total.saturating_sub(used),
                    used,
                },
            )
        },
        None => ERROR_NOT_SUPPORTED,
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPowerUsage(device: NvmlDevice, power: *mut c_uint) -> NvmlReturn {
    with_device(device, |target| match target {
        Target::Gpu(gpu) if supported(gpu, Reading::Power) => unsafe { put(power, gpu.power_milliwatts) },
        _ => ERROR_NOT_SUPPORTED,
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTemperature(
    device: NvmlDevice,
    sensor: c_uint,
    temperature: *mut c_uint,
) -> NvmlReturn {
    with_device(device, |target| match target {
        Target::Gpu(_) if sensor != TEMPERATURE_GPU => ERROR_INVALID_ARGUMENT,
        Target::Gpu(gpu) if supported(gpu, Reading::Temperature) => unsafe { put(temperature, gpu.temperature_c) },
        _ => ERROR_NOT_SUPPORTED,
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetClockInfo(device: NvmlDevice, clock: c_uint, mhz: *mut c_uint) -> NvmlReturn {
    with_device(device, |target| match target {
        Target::Gpu(gpu) if supported(gpu, Reading::Clocks) => match clock {
            CLOCK_GRAPHICS | CLOCK_SM => unsafe { put(mhz, gpu.sm_clock_mhz) },
            CLOCK_MEM => unsafe { put(mhz, 1593) },
            CLOCK_VIDEO => unsafe { put(mhz, 1275) },
            _ => ERROR_INVALID_ARGUMENT,
        },
        _ => ERROR_NOT_SUPPORTED,
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMigMode(
    device: NvmlDevice,
    current: *mut c_uint,
    pending: *mut c_uint,
) -> NvmlReturn {
    with_device(device, |target| match target {
        Target::Gpu(gpu) => {
            let mode = c_uint::from(!gpu.mig_devices.is_empty()) * DEVICE_MIG_ENABLE;
            match unsafe { put(current, mode) } {
                SUCCESS => unsafe { put(pending, mode) },
                error => error,
            }
        }
        Target::Mig(_) => ERROR_NOT_SUPPORTED,
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMaxMigDeviceCount(device: NvmlDevice, count: *mut c_uint) -> NvmlReturn {
    with_device(device, |target| match target {
        // A100/H100 have seven MIG slots whatever the current layout fills.
        Target::Gpu(gpu) if !gpu.mig_devices.is_empty() => unsafe { put(count, 7) },
        Target::Gpu(_) => unsafe { put(count, 0) },
        Target::Mig(_) => ERROR_NOT_SUPPORTED,
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMigDeviceHandleByIndex(
    device: NvmlDevice,
    index: c_uint,
    mig: *mut NvmlDevice,
) -> NvmlReturn {
    let gpu_index = ((device as usize) >> 8).wrapping_sub(1);
    with_device(device, |target| match target {
        Target::Gpu(gpu) if gpu.mig_devices.is_empty() => ERROR_NOT_SUPPORTED,
        Target::Gpu(gpu) if (index as usize) < gpu.mig_devices.len() => unsafe {
            put(mig, mig_handle(gpu_index, index as usize))
        },
        Target::Gpu(_) => ERROR_NOT_FOUND,
        Target::Mig(_) => ERROR_INVALID_ARGUMENT,
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceIsMigDeviceHandle(device: NvmlDevice, is_mig: *mut c_uint) -> NvmlReturn {
    with_device(device, |target| unsafe {
        put(is_mig, c_uint::from(matches!(target, Target::Mig(_))))
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetDeviceHandleFromMigDeviceHandle(
    mig: NvmlDevice,
    device: *mut NvmlDevice,
) -> NvmlReturn {
    let raw = mig as usize;
    with_device(mig, |target| match target {
        Target::Mig(_) => unsafe { put(device, (raw & !0xff) as NvmlDevice) },
        Target::Gpu(_) => ERROR_INVALID_ARGUMENT,
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceId(device: NvmlDevice, id: *mut c_uint) -> NvmlReturn {
    let raw = device as usize;
    with_device(device, |target| match target {
        Target::Mig(_) => unsafe { put(id, (raw & 0xff) as c_uint) },
        Target::Gpu(_) => ERROR_INVALID_ARGUMENT,
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMinorNumber(device: NvmlDevice, minor: *mut c_uint) -> NvmlReturn {
    let gpu = ((device as usize) >> 8).wrapping_sub(1);
    with_device(device, |_| unsafe { put(minor, gpu as c_uint) })
}
